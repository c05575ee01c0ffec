"""Persona red-teaming: attack templates as data (``attacks``), the harness that runs them and
scores refusal and persona projections (``harness``), and its typed result (``result``).
"""
