"""The README and docs show only commands and options that exist."""

from __future__ import annotations

import re
import shlex

import pytest

from scaling.cli import build_parser

from .conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?scaling\s+([a-z][a-z-]*)"
                     r"((?:[ \t]+(?:'[^'\n]*'|\"[^\"\n]*\"|[^\s`|;&#)'\"])+)*)", re.M)  # ')' only inside quotes


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def _shown_commands():
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
        for block in blocks:
            for match in COMMAND.finditer(block):
                yield doc.name, match.group(1), match.group(2)


SHOWN = sorted(set(_shown_commands()))


def test_docs_show_commands():
    assert any(name == "plan" for _, name, _ in SHOWN)


@pytest.mark.parametrize("doc, name, rest", SHOWN, ids=[f"{d}:{n}{r}"[:60] for d, n, r in SHOWN])
def test_shown_command_exists(doc, name, rest):
    commands = _subcommands()
    assert name in commands, f"{doc} shows `scaling {name}`, which the CLI does not have"
    known = {opt for action in commands[name]._actions for opt in action.option_strings}
    for word in shlex.split(rest, comments=True):
        if word.startswith("--"):
            option = word.split("=")[0]
            assert option in known, f"{doc} shows `scaling {name} {option}`, which `scaling {name}` does not take"
