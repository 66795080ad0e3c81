"""MLflow tracking: one experiment per sweep, one MLflow run per job, found again by its run id.

The only package that imports mlflow (`store`: Tracker; `runlog`: RunLog).
`Tracker(uri, experiment)` opens a store (`uri=None`: the embedded
sqlite store `sqlite:///<cwd>/mlflow.db`, created once under a file lock so parallel writers never race
on its schema); `tracker.open_run(run_id, tags, params)` creates the job's run or resumes the one tagged
`scaling.run_id = run_id` (never a second one) and returns a `RunLog`.

`RunLog.log(step, metrics)` only appends to a buffer: a background thread sends the buffer with
`log_batch` (<= 1000 metrics per call) and retries with backoff while the store is unreachable or
locked. Timestamps are taken at `log()` time, so a batch that is sent twice is stored once. Whatever
cannot be sent when the run finishes (or that the store refuses) is appended to a spool file
`<spool_dir>/<experiment>/<run id>.jsonl` and sent again by the next `open_run` of the same run id.

Reading runs back as a tidy table is `scaling.export.export_table` (re-exported here).
"""

from __future__ import annotations

from typing import Any

from scaling.errors import TrackError
from scaling.track.runlog import RunLog, log_artifact_file
from scaling.track.store import (
    MAX_BATCH,
    PARAM_PARAMS,
    STATUSES,
    TAG_ATTEMPT,
    TAG_BUDGET,
    TAG_GIT,
    TAG_PARAMS,
    TAG_REASON,
    TAG_RUN_ID,
    TAG_SEED,
    TAG_SIZE,
    TAG_SWEEP,
    TAG_SWEEP_SHA,
    UI_ADDRESS,
    RunSummary,
    Tracker,
    _retry,
    ensure_store,
    git_commit,
    job_params,
    job_tags,
    resolve_uri,
    sqlite_path,
)

__all__ = ["MAX_BATCH", "PARAM_PARAMS", "STATUSES", "TAG_ATTEMPT", "TAG_BUDGET", "TAG_GIT", "TAG_PARAMS", "TAG_REASON",
           "TAG_RUN_ID", "TAG_SEED", "TAG_SIZE", "TAG_SWEEP", "TAG_SWEEP_SHA", "UI_ADDRESS", "RunLog",
           "RunSummary", "Tracker", "ensure_store", "export_table", "git_commit", "job_params", "job_tags",
           "log_artifact_file",
           "read_client", "resolve_uri", "sqlite_path"]


def export_table(uri: str | None, experiment: str, **kwargs: Any):
    """Runs of `experiment` -> the tidy table (see `scaling.export.export_table`)."""
    from scaling.export import export_table as _export

    return _export(uri, experiment, **kwargs)


def read_client(uri: str, experiment: str, keys: list[str] | None = None):
    """(runs, attributes, metrics) of an experiment through the MLflow client (any tracking URI).

    The frames are those of `scaling.export.read_sql`; metric histories are fetched by a thread pool.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = _retry(lambda: client.get_experiment_by_name(experiment), f"reading experiment {experiment!r}")
    if exp is None or exp.lifecycle_stage != "active":
        names = [e.name for e in _retry(lambda: client.search_experiments(), f"listing experiments of {uri}")]
        raise TrackError(f"no experiment {experiment!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    runs, token = [], None
    while True:
        page = _retry(lambda t=token: client.search_runs([exp.experiment_id], max_results=1000, page_token=t),
                      f"searching runs of {experiment!r}")
        runs.extend(page)
        token = page.token
        if not token:
            break
    run_rows = [(r.info.run_id, r.info.run_name, r.info.status, r.info.start_time) for r in runs]
    attr_rows = [(r.info.run_id, kind, k, v) for r in runs
                 for kind, d in (("tag", r.data.tags), ("param", r.data.params)) for k, v in d.items()]
    wanted = [(r.info.run_id, k) for r in runs for k in r.data.metrics if keys is None or k in keys]

    def history(item):
        mid, key = item
        hist = _retry(lambda: client.get_metric_history(mid, key), f"reading {key} of run {mid}")
        return [(mid, key, m.step, m.value, m.timestamp, i) for i, m in enumerate(hist)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        metric_rows = [row for rows in pool.map(history, wanted) for row in rows]
    return (pd.DataFrame(run_rows, columns=["run_uuid", "name", "status", "start_time"]),
            pd.DataFrame(attr_rows, columns=["run_uuid", "kind", "key", "value"]),
            pd.DataFrame(metric_rows, columns=["run_uuid", "key", "step", "value", "timestamp", "seq"]))
