"""Persona red-teaming: attack templates as data (``attacks``), the harness that runs them and
scores refusal and persona projections (``harness``), and its typed result (``result``).
"""

from ..io import register_folder_kind

# A red-team run's folder, and one saved RedTeamResult (a folder of two results), recognised by their files if unmarked.
register_folder_kind(
    "result:red_team", None, lambda path, names: {"scores", "projections", "summary.json"} <= names, order=10
)
register_folder_kind(
    "redteam", "a red-team run (persona-gate redteam)", lambda path, names: "red_team" in names, order=20
)
