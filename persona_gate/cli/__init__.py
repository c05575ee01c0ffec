"""The command line: thin. Each command parses its flags, checks its inputs, calls one library
function, saves and prints where. Only :class:`~persona_gate.errors.PersonaGateError` becomes a
one-line message (exit 2); anything else is a bug and keeps its traceback.

Example::

    persona-gate run --config paper/organism.toml --out runs/organism
"""


def main(argv=None) -> None:
    """The ``persona-gate`` command (see :func:`persona_gate.cli.main.run`)."""
    from .main import run

    run(argv)
