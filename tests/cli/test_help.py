"""``--help`` of every command says what it does, and every option says what it takes.

Walks the real parser (:func:`persona_gate.cli.main.build_parser`), every subcommand at every
depth: a description under the usage line, a help text for every option and positional (``-h``
aside), the default named where an option has one, and the position flags list the spellings
:func:`persona_gate.prompts.positions.parse_position` accepts.
"""

from __future__ import annotations

import argparse

import pytest

from persona_gate.cli.main import build_parser
from persona_gate.prompts.positions import SPANS, SPELLINGS, parse_position


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) for the parser and every subparser under it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(build_parser()))
OPTIONS = [
    (" ".join(path), action)
    for path, parser in COMMANDS.items()
    for action in parser._actions
    if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
]


def test_the_walk_reaches_every_command():
    names = {" ".join(p) for p in COMMANDS}
    assert {"demo", "directions", "run", "guard", "organism train", "export control-vector"} <= names
    assert len(names) >= 17 and len(OPTIONS) >= 150


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "persona-gate")
def test_every_command_has_a_description(path):
    parser = COMMANDS[path]
    assert parser.description and len(parser.description.split()) >= 8, (path, parser.description)
    shown = " ".join(parser.format_help().split()).replace("- ", "-")  # unwrapped (argparse breaks at hyphens)
    assert " ".join(parser.description.split()) in shown  # `--help` shows it


@pytest.mark.parametrize("command, action", OPTIONS, ids=[f"{c} {a.dest}" for c, a in OPTIONS])
def test_every_option_has_a_help_text_that_names_its_default(command, action):
    assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, (command, action.dest)
    unstated = action.default in (None, False, argparse.SUPPRESS) or action.required or not action.option_strings
    assert unstated or "default" in action.help, (command, action.option_strings, action.default, action.help)


def test_the_position_flags_list_every_spelling():
    assert all(s in SPELLINGS for s in SPANS)
    for example in ("last", "post_instruction[-2]", *(f"mean:{s}" for s in SPANS)):
        parse_position(example)  # every spelling the help names parses
    flags = {
        (c, a.option_strings[0]): a.help
        for c, a in OPTIONS
        if a.option_strings and a.option_strings[0].endswith("-position")
    }
    assert {("directions", "--refusal-position"), ("directions", "--persona-position")} <= set(flags)
    for key, text in flags.items():
        assert "position selector" not in text and SPELLINGS in text, (key, text)


def test_demo_help_quotes_no_time_that_could_contradict_the_measured_one(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["demo", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "bundled organism" in out and "verdict" in out
    assert "minute" not in out and " s " not in out and "seconds on a CPU" in out
