"""The README and docs show only commands and options that exist, and link only to what exists."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex

import pytest

from scaling.cli import build_parser

from .conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
COMMAND = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?scaling\s+([a-z][a-z-]*)"
                     r"((?:[ \t]+(?:'[^'\n]*'|\"[^\"\n]*\"|[^\s`|;&#)'\"])+)*)", re.M)  # ')' only inside quotes
COMMAND_LINE = re.compile(r"^(?:\$ )?(?:\.venv/bin/|python -m )?scaling (.*)$")  # a line that runs scaling
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def _rel(doc) -> str:
    return doc.relative_to(REPO).as_posix()


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def _shown_commands():
    for doc in DOCS:
        text = doc.read_text()
        blocks = FENCE.findall(text) + re.findall(r"`([^`\n]+)`", text)
        for block in blocks:
            for match in COMMAND.finditer(block):
                yield _rel(doc), match.group(1), match.group(2)


def _command_lines():
    """Whole command lines of code blocks (what a reader copies and runs), with `\\` continuations joined."""
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                match = COMMAND_LINE.match(line.strip())
                if match:
                    yield _rel(doc), match.group(1)


SHOWN = sorted(set(_shown_commands()))
LINES = sorted(set(_command_lines()))


def test_docs_show_commands():
    assert any(name == "plan" for _, name, _ in SHOWN)
    assert any(doc.startswith("docs/guides/") for doc, _ in LINES)


@pytest.mark.parametrize("doc, name, rest", SHOWN, ids=[f"{d}:{n}{r}"[:60] for d, n, r in SHOWN])
def test_shown_command_exists(doc, name, rest):
    commands = _subcommands()
    assert name in commands, f"{doc} shows `scaling {name}`, which the CLI does not have"
    known = {opt for action in commands[name]._actions for opt in action.option_strings}
    for word in shlex.split(rest, comments=True):
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-[\d.]+(e-?\d+)?", word):
            option = word.split("=")[0]
            assert option in known, f"{doc} shows `scaling {name} {option}`, which `scaling {name}` does not take"


@pytest.mark.parametrize("doc, line", LINES, ids=[f"{d}:{line}"[:70] for d, line in LINES])
def test_command_lines_parse(doc, line):
    """A command line of a code block parses as a whole: its subcommand, the positional arguments it needs
    (a sweep file, `tune --size`), option values of the right type and choice."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(shlex.split(line, comments=True))
    except SystemExit:
        pytest.fail(f"{doc}: `scaling {line}` does not parse: {err.getvalue().strip().splitlines()[-1]}")
    assert isinstance(args, argparse.Namespace) and getattr(args, "func", None), f"{doc}: `scaling {line}`"
    if not getattr(args, "sweep", None):  # what the commands require at run time without a sweep file
        need = {"fit": ("table", "name"), "report": ("table", "out"), "export": ("experiment",)}.get(args.command, ())
        missing = [f"--{n}" for n in need if not getattr(args, n)]
        assert not missing, f"{doc}: `scaling {line}` needs a sweep file or {', '.join(missing)}"
    sweep = getattr(args, "sweep", None)
    if sweep and sweep.startswith("sweeps/") and sweep.split("/")[1] in ("demo.yaml", "vsd-t2i.yaml"):
        assert (REPO / sweep).is_file(), f"{doc}: `scaling {line}` names {sweep}, which the repository lacks"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


LINKS = sorted({(_rel(doc), target) for doc in DOCS
                for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", doc.read_text()))
                if not re.match(r"[a-z]+:", target)})


@pytest.mark.parametrize("doc, target", LINKS, ids=[f"{d}->{t}"[:70] for d, t in LINKS])
def test_relative_links_resolve(doc, target):
    path, _, anchor = target.partition("#")
    file = (REPO / doc).parent / path if path else REPO / doc
    assert file.exists(), f"{doc} links to {path}, which does not exist"
    if anchor and file.suffix == ".md":
        slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", FENCE.sub("", file.read_text()), re.M)}
        assert anchor in slugs, f"{doc} links to {target}; headings of {path or doc}: {sorted(slugs)}"


def test_the_index_links_every_doc():
    index = (REPO / "docs" / "index.md").read_text()
    linked = {(REPO / "docs" / t.partition("#")[0]).resolve() for t in re.findall(r"\]\(([^)\s#]+)", index)}
    docs = [p for p in (REPO / "docs").rglob("*.md") if p.name != "index.md"]
    assert docs and not [_rel(p) for p in docs if p.resolve() not in linked]
