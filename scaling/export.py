"""Logged runs -> the tidy table: one row per (run, step), one column per metric (docs/design.md).

Two readers give the same raw records (run, key, step, value, timestamp, sequence):
- SQL stores (`sqlite:///...`, `postgresql://...`, `mysql://...`): MLflow's tables read directly with
  SQLAlchemy, a few queries for the whole experiment (100 runs x 1,000 steps x 5 metrics in well under 5 s);
- any other tracking URI (an `mlflow server`, a managed one): `scaling.track` through the MLflow client,
  one metric history per (run, metric), fetched by a thread pool.

After any number of restarts a (run, metric, step) may have been logged several times: the last logged
value (latest timestamp, then insertion order) is kept. Runs logged by other training code are read too:
the size and parameter-count columns are looked up by name among each run's tags, then params, then
metrics. A run whose trainer recorded its own parameter count (`ctx.set_params`, the tag
`scaling.params`) gets that count instead of the planner's `job.params`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from scaling.errors import TrackError

log = logging.getLogger(__name__)

SAMPLES = "progress/samples"
FLOPS = "progress/flops"
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
ID_COLUMNS = ["run_id", "sweep", "size", "params", "budget", "seed", "status", "step", "samples", "flops"]


def _is_sql(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES


def read_sql(uri: str, experiment: str, keys: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, attributes, metrics) of an experiment, read from MLflow's SQL tables.

    runs: run_uuid, name, status. attributes: run_uuid, kind ('tag'/'param'), key, value.
    metrics: run_uuid, key, step, value, timestamp, seq (larger = logged later at equal timestamps).
    """
    import sqlalchemy as sa

    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if db is not None and not db.exists():
        raise TrackError(f"no MLflow store at {db}: run the sweep first, or pass --uri of the store that has it")
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as con:
            exp = con.execute(sa.text("SELECT experiment_id FROM experiments WHERE name = :n AND lifecycle_stage = "
                                      "'active'"), {"n": experiment}).fetchone()
            if exp is None:
                names = [r[0] for r in con.execute(sa.text("SELECT name FROM experiments WHERE lifecycle_stage = "
                                                           "'active' ORDER BY name"))]
                raise TrackError(f"no experiment {experiment!r} in {uri}; experiments there: "
                                 f"{', '.join(names) or 'none'}")
            args = {"e": exp[0]}
            sub = "SELECT run_uuid FROM runs WHERE experiment_id = :e AND lifecycle_stage = 'active'"
            runs = pd.DataFrame(con.execute(sa.text(
                "SELECT run_uuid, name, status, start_time FROM runs WHERE experiment_id = :e AND "
                "lifecycle_stage = 'active'"), args).fetchall(), columns=["run_uuid", "name", "status", "start_time"])
            attrs = pd.DataFrame(con.execute(sa.text(
                f"SELECT run_uuid, 'tag', key, value FROM tags WHERE run_uuid IN ({sub}) UNION ALL "
                f"SELECT run_uuid, 'param', key, value FROM params WHERE run_uuid IN ({sub})"), args).fetchall(),
                columns=["run_uuid", "kind", "key", "value"])
            order = "rowid" if db is not None else "0"  # sqlite: insertion order breaks timestamp ties
            where = ""
            if keys is not None:
                names = {f"k{i}": k for i, k in enumerate(keys)}
                args.update(names)
                where = f" AND key IN ({', '.join(':' + n for n in names)})" if names else " AND 1 = 0"
            result = con.execute(sa.text(f"SELECT run_uuid, key, step, value, is_nan, timestamp, {order} FROM metrics "
                                         f"WHERE run_uuid IN ({sub}){where}"), args)
            # plain DBAPI tuples: building a DataFrame from SQLAlchemy Row objects is several times slower
            metrics = pd.DataFrame.from_records(result.cursor.fetchall(), columns=[
                "run_uuid", "key", "step", "value", "is_nan", "timestamp", "rowid"])
    except sa.exc.OperationalError as e:
        raise TrackError(f"cannot read the MLflow store {uri}: {e.orig}") from e
    finally:
        engine.dispose()
    if len(metrics):
        metrics.loc[metrics["is_nan"].astype(bool), "value"] = float("nan")
    return runs, attrs, metrics.drop(columns=["is_nan"]).rename(columns={"rowid": "seq"})


def _lookup(attrs: pd.DataFrame, last: pd.DataFrame, runs: pd.Series, name: str) -> pd.Series:
    """Per run: the tag `name`, else the param `name`, else the last value of the metric `name`."""
    out = pd.Series(index=runs, dtype=object)
    for kind in ("param", "tag"):  # tags win: filled last
        hit = attrs[(attrs["kind"] == kind) & (attrs["key"] == name)].set_index("run_uuid")["value"]
        out.loc[hit.index.intersection(out.index)] = hit
    if out.isna().any() and len(last):
        metric = last[last["key"] == name].set_index("run_uuid")["value"]
        missing = out.index[out.isna()].intersection(metric.index)
        out.loc[missing] = metric.loc[missing]
    return out


def export_table(uri: str | None, experiment: str, *, metrics: Sequence[str] | None = None,
                 size_col: str = "scaling.size", params_col: str = "job.params", step_col: str | None = None,
                 samples_col: str = SAMPLES, flops_col: str = FLOPS, run_id_col: str = "scaling.run_id",
                 run_ids: Sequence[str] | None = None, reader: str = "auto") -> pd.DataFrame:
    """The tidy table of `experiment`: columns `run_id, sweep, size, params, budget, seed, status, step,
    samples, flops` and one per metric (all logged metrics, or `metrics`), one row per (run, step),
    sorted by run id and step.

    size_col / params_col / run_id_col: tag, param or metric holding the size name / parameter count /
    run id (runs without the run-id tag use their MLflow run name). step_col: a metric whose value is the
    step (default: MLflow's step). reader: 'auto', 'sql' (MLflow's SQL tables) or 'client' (MLflow client).
    """
    from scaling.track import resolve_uri

    uri = resolve_uri(uri)
    if reader not in ("auto", "sql", "client"):
        raise TrackError(f"reader {reader!r} is unknown; valid: auto, sql, client")
    fixed = [samples_col, flops_col] + ([step_col] if step_col else [])
    keys = None if metrics is None else list(dict.fromkeys([*metrics, *fixed, size_col, params_col]))
    sql = reader == "sql" or (reader == "auto" and _is_sql(uri))
    if not sql:
        from scaling.track import read_client
    read = read_sql if sql else read_client
    runs, attrs, raw = read(uri, experiment, keys)
    missing = [m for m in metrics or () if m not in set(raw["key"])]
    if missing and len(runs):
        logged = sorted(set(read(uri, experiment, None)[2]["key"]))
        raise TrackError(f"metrics not logged by any run of {experiment!r}: {', '.join(missing)}; "
                         f"logged: {', '.join(logged) or 'none'}")
    return tidy(runs, attrs, raw, experiment, metrics=metrics, size_col=size_col, params_col=params_col,
                step_col=step_col, samples_col=samples_col, flops_col=flops_col, run_id_col=run_id_col,
                run_ids=run_ids)


def tidy(runs: pd.DataFrame, attrs: pd.DataFrame, raw: pd.DataFrame, experiment: str, *,
         metrics: Sequence[str] | None, size_col: str, params_col: str, step_col: str | None, samples_col: str,
         flops_col: str, run_id_col: str, run_ids: Sequence[str] | None) -> pd.DataFrame:
    """Raw records -> the tidy table (deduplicated: the last logged value per run, metric and step)."""
    raw = raw.sort_values(["timestamp", "seq"], kind="stable").drop_duplicates(["run_uuid", "key", "step"], keep="last")
    last = raw.sort_values("step", kind="stable").drop_duplicates(["run_uuid", "key"], keep="last")
    uuids = runs["run_uuid"]
    meta = pd.DataFrame(index=uuids)
    rid = _lookup(attrs, last, uuids, run_id_col)
    meta["run_id"] = rid.fillna(runs.set_index("run_uuid")["name"]).fillna(pd.Series(uuids.values, index=uuids))
    sweep = _lookup(attrs, last, uuids, "scaling.sweep")
    meta["sweep"] = sweep.fillna(experiment)
    meta["size"] = _lookup(attrs, last, uuids, size_col)
    params = _lookup(attrs, last, uuids, params_col)
    if params_col == "job.params":  # an own trainer's count (ctx.set_params) wins over the planner's
        own = attrs[(attrs["kind"] == "tag") & (attrs["key"] == "scaling.params")].set_index("run_uuid")["value"]
        params.loc[own.index.intersection(params.index)] = own
    meta["params"] = pd.to_numeric(params, errors="coerce")
    meta["budget"] = _lookup(attrs, last, uuids, "scaling.budget")
    meta["seed"] = pd.to_numeric(_lookup(attrs, last, uuids, "scaling.seed"), errors="coerce").astype("Int64")
    meta["status"] = runs.set_index("run_uuid")["status"]
    for col, name in ((size_col, "size"), (params_col, "params")):
        if len(meta) and meta[name].isna().all() and col not in (
                "scaling.size", "job.params"):
            known = sorted(set(attrs["key"]) | set(raw["key"]))
            raise TrackError(f"no run of {experiment!r} has a tag, param or metric {col!r} (for --{name}-col); "
                             f"names found: {', '.join(known[:40])}")
    if run_ids is not None:
        meta = meta[meta["run_id"].isin(set(run_ids))]
    # several MLflow runs with one run id (a foreign tool's restarts): keep the oldest, like the tracker
    start = runs.set_index("run_uuid")["start_time"].reindex(meta.index)
    meta = meta.assign(_start=start).sort_values("_start", kind="stable")
    dup = meta["run_id"].duplicated(keep="first")
    if dup.any():
        log.warning("%d runs share a run id with an older run and are left out: %s", int(dup.sum()),
                    ", ".join(meta.index[dup][:5]))
    meta = meta[~dup].drop(columns="_start")
    raw = raw[raw["run_uuid"].isin(meta.index)]
    if metrics is not None:
        raw = raw[raw["key"].isin(set(metrics) | {samples_col, flops_col, step_col})]
    wide = raw.pivot(index=["run_uuid", "step"], columns="key", values="value") if len(raw) else pd.DataFrame(
        index=pd.MultiIndex.from_arrays([[], []], names=["run_uuid", "step"]))
    wide.columns.name = None
    wide = wide.rename(columns={samples_col: "samples", flops_col: "flops"})
    for col in ("samples", "flops"):
        if col not in wide:
            wide[col] = float("nan")
    if step_col:
        if step_col not in wide:
            raise TrackError(f"no metric {step_col!r} (for --step-col) in {experiment!r}")
        wide = wide[wide[step_col].notna()].reset_index(level="step", drop=True).rename(columns={step_col: "step"})
        wide = wide.set_index("step", append=True)
    table = wide.reset_index().merge(meta, left_on="run_uuid", right_index=True, how="inner")
    metric_cols = sorted(c for c in wide.columns if c not in ("samples", "flops"))
    if metrics is not None:
        metric_cols = [m for m in metrics if m in wide.columns]
    table = table[ID_COLUMNS + metric_cols].sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
    table["step"] = table["step"].astype("int64")
    table["params"] = table["params"].astype("Int64") if table["params"].notna().all() else table["params"]
    return table


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table atomically as CSV (or Parquet for a .parquet path)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
