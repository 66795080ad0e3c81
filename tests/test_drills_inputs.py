"""Fault drills for inputs (property-based): malformed sweep files, exported tables and fit JSON files given to
the CLI end in one clean `error: ...` line and a non-zero exit (or are left out by name), never a traceback.

The CLI's entry function runs in this process (`scaling.cli.main`): any exception other than a
`ScalingError` escapes it and fails the test.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaling.cli import main
from scaling.fit import FitOptions, predict_final_from_partial
from scaling.fit.partial import write_partial
from scaling.fit.text import describe
from scaling.report import load_fits

from .conftest import tiny_sweep_dict
from .fit_helpers import tidy_table

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -1e-300, "", " ", "abc", "NaN", "inf", "-1", "1e999", "None", "\x00", "é"]),
    st.text(max_size=10),
)
JUNK = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(st.text(max_size=4), SCALAR, max_size=2))


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`scaling ARGS` in this process: (exit status, stdout, stderr). A failure must be one `error:` line."""
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if rc and err.strip():
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    if not rc:
        assert "error: " not in err
    return rc, out, err


def paths(node, prefix=()):
    """Every key path of a JSON/YAML document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*prefix, i))


def edit(doc, edits):
    """Apply (path, action, junk) edits: set the value at path, delete it, or add a sibling key."""
    doc = copy.deepcopy(doc)
    for path, action, junk in edits:
        if not path:
            doc = junk
            continue
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            if action == "set":
                node[path[-1]] = junk
            elif action == "delete" and isinstance(node, dict):
                node.pop(path[-1], None)
            elif action == "delete" and isinstance(node, list) and path[-1] < len(node):
                node.pop(path[-1])
            elif isinstance(node, dict):
                node[f"zz_{path[-1]}"] = junk
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this part
    return doc


def edits_of(doc) -> st.SearchStrategy:
    return st.lists(st.tuples(st.sampled_from(list(paths(doc))), st.sampled_from(["set", "delete", "extra"]), JUNK),
                    min_size=1, max_size=4)


def damaged(text: bytes) -> st.SearchStrategy:
    """The bytes of a file, cut short, with junk spliced in, or replaced by junk."""
    return st.one_of(
        st.integers(0, len(text)).map(lambda n: text[:n]),
        st.tuples(st.integers(0, len(text)), st.binary(min_size=1, max_size=40)).map(
            lambda t: text[:t[0]] + t[1] + text[t[0]:]),
        st.binary(max_size=200),
        st.just(b""),
    )


# --- sweep files ---------------------------------------------------------------------------------------

SWEEP = tiny_sweep_dict()


@settings(FUZZ, max_examples=80)
@given(data=st.one_of(edits_of(SWEEP).map(lambda e: yaml.safe_dump(edit(SWEEP, e)).encode()),
                      damaged(yaml.safe_dump(SWEEP).encode())))
def test_malformed_sweep_files_through_the_cli(tmp_path, capsys, data):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(data)
    rc, out, err = run_cli(capsys, "plan", str(path))
    assert rc in (0, 2)
    if rc:
        assert err.startswith(f"error: {path}: ") and not out
        for command in (["run"], ["status"], ["export"], ["fit"], ["report"], ["submit", "--dry-run"]):
            assert run_cli(capsys, *command, str(path)) == (2, "", err)  # every command: the same line, nothing run


# --- exported tables -----------------------------------------------------------------------------------

TABLE = tidy_table(sizes={"S": 90_000, "M": 330_000, "L": 950_000}, steps=60, every=20).drop(
    columns=["eval/iw/uniform"])
CELL = st.tuples(st.integers(0, len(TABLE) - 1), st.sampled_from(list(TABLE.columns)))


@st.composite
def tables(draw) -> tuple[str, bytes]:
    """(file suffix, file bytes) of a tidy table with garbage in it, as CSV or Parquet."""
    t = TABLE.copy().astype(object)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cell", "column", "drop", "rename", "add", "rows"]))
        if kind == "cell":
            row, col = draw(CELL)
            if col in t.columns:
                t.loc[row, col] = draw(SCALAR)
        elif kind == "column":
            t[draw(st.sampled_from(list(t.columns) or ["x"]))] = draw(SCALAR)
        elif kind == "drop" and len(t.columns):
            t = t.drop(columns=draw(st.sampled_from(list(t.columns))))
        elif kind == "rename" and len(t.columns):
            t = t.rename(columns={draw(st.sampled_from(list(t.columns))): draw(st.text(max_size=8))})
        elif kind == "add":
            t[draw(st.text(max_size=8))] = draw(SCALAR)
        else:
            t = t.iloc[draw(st.lists(st.integers(0, len(t) - 1), max_size=len(t) + 3))] if len(t) else t
        t = t.astype(object)  # any value fits any cell
    t.columns = [str(c) for c in t.columns]
    if draw(st.booleans()) and t.columns.is_unique:
        buf = io.BytesIO()
        try:
            t.to_parquet(buf, index=False)
        except Exception:  # noqa: BLE001 - pyarrow refuses columns of mixed types: store them as text
            buf = io.BytesIO()
            t.astype(str).to_parquet(buf, index=False)
        return ".parquet", draw(st.one_of(st.just(buf.getvalue()), damaged(buf.getvalue())))
    text = t.to_csv(index=False).encode()
    return ".csv", draw(st.one_of(st.just(text), st.just(text), damaged(text)))


@settings(FUZZ, max_examples=60)
@given(table=tables())
def test_malformed_tables_through_scaling_fit(tmp_path, capsys, table):
    suffix, data = table
    path = tmp_path / f"table{suffix}"
    path.write_bytes(data)
    rc, out, err = run_cli(capsys, "fit", "--table", str(path), "--name", "x", "--out", str(tmp_path / "fits"),
                           "--law", "power", "--bootstrap", "3")
    if rc:  # nothing usable (exit 2 and one line), or fits that could not be made, each named
        assert rc == 2 and (err.startswith("error: ") or "not fitted: " in out)
    for f in (tmp_path / "fits" / "x").glob("*.json"):  # strict JSON: no NaN or Infinity written
        constants: list[str] = []
        json.loads(f.read_text(), parse_constant=constants.append)
        assert not constants, f.name


def test_exported_parquet_is_read_by_fit_and_report(tmp_path, capsys):
    """`scaling export -o table.parquet` writes Parquet: fit and report read it like the CSV."""
    path = tmp_path / "table.parquet"
    TABLE.to_parquet(path, index=False)
    rc, out, _ = run_cli(capsys, "fit", "--table", str(path), "--name", "x", "--out", str(tmp_path / "fits"),
                         "--law", "power", "--bootstrap", "3", "--no-curves")
    assert rc == 0 and "holdout L: predicted" in out
    rc, out, _ = run_cli(capsys, "report", "--table", str(path), "--fit", str(tmp_path / "fits" / "x"),
                         "--out", str(tmp_path / "report"))
    assert rc == 0 and "note:" not in out and (tmp_path / "report" / "index.html").exists()


@settings(FUZZ, max_examples=15)
@given(table=tables())
def test_malformed_tables_through_scaling_report(tmp_path, capsys, table):
    suffix, data = table
    path = tmp_path / f"table{suffix}"
    path.write_bytes(data)
    rc, out, err = run_cli(capsys, "report", "--table", str(path), "--out", str(tmp_path / "report"))
    assert rc in (0, 1)
    if rc == 0:
        assert (tmp_path / "report" / "index.html").exists()


# --- fit JSON files ------------------------------------------------------------------------------------

FIT_TABLE = tidy_table(steps=60, every=20).drop(columns=["eval/iw/uniform"])  # S, M, L fitted, XL held out

@pytest.fixture(scope="module")
def fit_files(tmp_path_factory) -> dict[str, dict]:
    """Real files of `scaling fit`: a size law, a loss curve, and a partial-curve prediction."""
    out = tmp_path_factory.mktemp("fits")
    csv = out / "t.csv"
    FIT_TABLE.to_csv(csv, index=False)
    assert main(["fit", "--table", str(csv), "--name", "x", "--out", str(out), "--law", "power_offset",
                 "--bootstrap", "8"]) == 0
    running = FIT_TABLE[~((FIT_TABLE["size"] == "XL") & (FIT_TABLE["step"] > 20))].copy()
    running.loc[running["size"] == "XL", "status"] = "RUNNING"
    rows = predict_final_from_partial(running, "XL", "eval/iw/laplace", 60, opts=FitOptions(bootstrap=8))
    write_partial(out / "x" / "partial.json", rows, metric="eval/iw/laplace", law="chinchilla", size="XL",
                  final_step=60)
    docs = {p.name: json.loads(p.read_text()) for p in (out / "x").glob("*.json")}
    assert {"iw-laplace__power_offset__params.json", "iw-laplace__power_offset__steps-M.json",
            "partial.json"} <= set(docs)
    return {k: docs[k] for k in ("iw-laplace__power_offset__params.json", "iw-laplace__power_offset__steps-M.json",
                                 "partial.json")}


@st.composite
def fit_json(draw, docs: dict[str, dict]) -> bytes:
    doc = docs[draw(st.sampled_from(sorted(docs)))]
    bad = edit(doc, draw(edits_of(doc)))
    text = json.dumps(bad, allow_nan=True).encode()
    return draw(st.one_of(st.just(text), st.just(text), damaged(text)))


def _write_all(folder: Path, files: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    for i, data in enumerate(files):
        (folder / f"f{i:02d}.json").write_bytes(data)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_malformed_fit_json_is_left_out_by_name(tmp_path, fit_files, data):
    """The report's reader: each file is read whole or named as a problem; what is read can be described."""
    files = data.draw(st.lists(fit_json(fit_files), min_size=1, max_size=5))
    _write_all(tmp_path / "fits", files)
    fits, partials, problems = load_fits([tmp_path / "fits"])
    assert len(fits) + len(partials) + len(problems) == len(files)
    assert all(".json skipped: " in p and "not a readable" in p for p in problems)
    for fit in fits:
        describe(fit)  # what `scaling fit` prints
        x = np.geomspace(1e4, 1e7, 5)
        fit.predict(*[x] * len(fit.columns))
        fit.band(*[x] * len(fit.columns))
    for partial in partials:
        assert all(isinstance(r.predicted, float) and isinstance(r.points, int) for r in partial.rows)


@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_malformed_fit_json_through_scaling_report(tmp_path, capsys, fit_files, data):
    """`scaling report --fit FOLDER` with a dozen damaged fit files: the report is made, each bad file named."""
    files = data.draw(st.lists(fit_json(fit_files), min_size=12, max_size=12))
    _write_all(tmp_path / "fits", files)
    csv = tmp_path / "t.csv"
    FIT_TABLE.to_csv(csv, index=False)
    rc, out, err = run_cli(capsys, "report", "--table", str(csv), "--fit", str(tmp_path / "fits"),
                           "--out", str(tmp_path / "report"))
    assert rc == 0 and (tmp_path / "report" / "index.html").exists()
    named = {line.split(" skipped: ")[0].rsplit("/", 1)[-1] for line in out.splitlines() if " skipped: " in line}
    _, _, problems = load_fits([tmp_path / "fits"])
    assert named == {p.split(" skipped: ")[0].rsplit("/", 1)[-1] for p in problems}  # every bad file, by name
