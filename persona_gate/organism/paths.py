"""Where the bundled organism's weights live.

An installed wheel carries the repository's ``data/`` as ``persona_gate/_data`` (see
pyproject's force-include); a source checkout has it at ``<repo>/data``. The installed copy
wins when both exist.

Example::

    path = organism_path()          # raises ModelNotFoundError with the fix if weights are missing
    print(ORGANISM_DIR / "card.json")
    AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError
from ..io import register_folder_kind
from ..resources import data_dir

# One resolver for the data folder (wheel copy or checkout), shared with the prompt sets.
ORGANISM_DIR: Path = data_dir() / "organism"

# A model folder: the organism, a fine-tuned copy, or a LoRA chat model (persona_gate.finetune); unmarked
# ones (written before folder marks) are recognised by their files.
FOLDER_KIND = register_folder_kind(
    "organism",
    "a chat-model organism (persona-gate organism train)",
    lambda path, names: (
        "config.json" in names and bool({"card.json", "persona_gate_profile.json", "model.safetensors"} & names)
    ),
    order=50,
)


def organism_path() -> Path:
    """The bundled organism's folder, checked to hold weights and a tokenizer."""
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (ORGANISM_DIR / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the bundled organism at {ORGANISM_DIR} lacks {missing}; rebuild it with "
            "`persona-gate organism train --out data/organism --seed 0` or reinstall persona_gate"
        )
    return ORGANISM_DIR
