"""Tracker figures: export speed of a large experiment, and logging overhead as a fraction of step time.

    PYTHONPATH=. python benchmarks/track.py                    # both, store under /tmp/scaling-bench
    PYTHONPATH=. python benchmarks/track.py export --client    # + the MLflow-client reader, for comparison
    PYTHONPATH=. python benchmarks/track.py overhead --steps 400

export: a sqlite store with 100 runs x 1,000 steps x 5 metrics is built once with `log_batch` (1,000 metrics
per call; kept in --store and reused), then what `scaling export` does (`export_table`, CSV written) is timed
(target: under 5 s).

overhead: the demo sweep's smallest (fastest) size S trains real steps (batch 64, 1 thread, forward +
backward + AdamW) while a `RunLog` logs what the trainer logs at the demo's cadence (6 metrics every
--log-every=10 steps; the 81 per-level losses and 5 L_iw every --eval-every=200 steps). Reported: the time of
`log()` calls on the training thread, the CPU time of the background sender thread (from /proc), and both
as a fraction of the training time (target: under 1%); also the wall time with and without logging, from
interleaved blocks (noisy on a shared machine). `--log-every 1 --eval-every 20` is a heavier worst case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

STEPS, RUNS, METRICS = 1000, 100, ("train/loss", "eval/iw/laplace", "eval/iw/uniform", "progress/samples",
                                   "progress/flops")


def build_store(uri: str, runs: int = RUNS, steps: int = STEPS) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from scaling.track import Tracker

    tracker = Tracker(uri, "bench")
    client = MlflowClient(uri)
    started = time.perf_counter()
    for r in range(runs):
        rid = f"bench-R{r:03d}-{steps}steps-s0"
        run = client.create_run(tracker.experiment_id, run_name=rid)
        mid = run.info.run_id
        client.log_batch(mid, params=[Param("job.params", str(1000 * (r + 1)))],
                         tags=[RunTag("scaling.run_id", rid), RunTag("scaling.size", f"R{r:03d}")])
        ts = int(time.time() * 1000)
        points = [Metric(key, 1.0 / (step + 1) + k + r, ts + step, step) for step in range(steps)
                  for k, key in enumerate(METRICS)]
        for i in range(0, len(points), 1000):
            client.log_batch(mid, metrics=points[i:i + 1000])
        client.set_terminated(mid, "FINISHED")
        if r % 10 == 9:
            print(f"  built {r + 1} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def synthetic_store(folder: Path, runs: int = RUNS, steps: int = STEPS) -> str:
    """The URI of a sqlite store with `runs` runs x `steps` steps x 5 metrics (experiment `bench`), built once
    with `log_batch` and kept in `folder` (the default size as export.db)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "export.db" if (runs, steps) == (RUNS, STEPS) else f"export-{runs}x{steps}.db"
    uri = f"sqlite:///{folder / name}"
    if not (folder / f"{name}.done").exists():
        (folder / name).unlink(missing_ok=True)
        print(f"building {runs} runs x {steps} steps x {len(METRICS)} metrics with log_batch ...", file=sys.stderr)
        t = time.perf_counter()
        build_store(uri, runs, steps)
        print(f"store built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        (folder / f"{name}.done").touch()
    return uri


def time_export(uri: str, experiment: str, repeat: int = 3, out: Path | None = None):
    """What `scaling export` does (the SQL reader's tidy table, written as CSV), `repeat` times.

    Returns (the table, seconds of each repeat)."""
    import tempfile

    from scaling.export import write_table
    from scaling.track import export_table

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            t = time.perf_counter()
            table = export_table(uri, experiment, reader="sql")
            write_table(table, out or Path(tmp) / "table.csv")
            times.append(time.perf_counter() - t)
    return table, times


def bench_export(store: Path, client_too: bool) -> None:
    from scaling.track import export_table

    uri = synthetic_store(store)
    table, times = time_export(uri, "bench")
    assert len(table) == RUNS * STEPS and table["run_id"].nunique() == RUNS, table.shape
    assert table[list(METRICS[:3])].notna().all().all()
    print(f"export (SQL reader, + CSV) of {RUNS} runs x {STEPS} steps x {len(METRICS)} metrics: "
          f"best {min(times):.2f} s, median {statistics.median(times):.2f} s ({len(table)} rows, "
          f"{len(table) / min(times):,.0f} rows/s) [target < 5 s]")
    if client_too:
        t = time.perf_counter()
        slow = export_table(uri, "bench", reader="client")
        print(f"export (MLflow client reader, get_metric_history x {RUNS * len(METRICS)}, 8 threads): "
              f"{time.perf_counter() - t:.2f} s, same table: {slow.equals(table)}")


def _thread_cpu(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_overhead(store: Path, steps: int, log_every: int, eval_every: int) -> None:
    import torch

    from scaling.models import build_model
    from scaling.spec import load_sweep
    from scaling.track import Tracker

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml")
    model = build_model(spec.model.sizes["S"], spec.model, spec.data.image_size, spec.data.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    z = torch.randn(64, spec.data.channels, spec.data.image_size, spec.data.image_size)
    lam = torch.randn(64)

    def step() -> float:
        loss = (model(z, lam) - z).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(5):
        step()
    store.mkdir(parents=True, exist_ok=True)
    (store / "overhead.db").unlink(missing_ok=True)
    uri = f"sqlite:///{store / 'overhead.db'}"
    run = Tracker(uri, "overhead", spool_dir=store / "spool").open_run("overhead-S")
    run.log(0, {"warmup": 0.0})  # the first send imports and caches; not part of the steady state
    assert run.flush(timeout=60)
    sender = run._thread.native_id
    cpu0 = _thread_cpu(sender)
    in_log = 0.0
    plain, logged = [], []
    block = 20
    for b in range(steps // block):  # alternate blocks with and without logging: drift hits both alike
        with_log = b % 2 == 1
        t0 = time.perf_counter()
        for i in range(block):
            loss = step()
            s = (b // 2) * block + i + 1  # the step count of the logged blocks alone
            if with_log and s % log_every == 0:
                t = time.perf_counter()
                run.log(s, {"train/loss": loss, "train/lr": 1e-3, "progress/samples": 64.0 * s,
                            "progress/flops": 1e9 * s, "perf/samples_per_s": 500.0, "train/grad_norm": 1.0})
                in_log += time.perf_counter() - t
            if with_log and s % eval_every == 0:
                t = time.perf_counter()
                run.log(s, {f"eval/level/{k:03d}": loss * k for k in range(81)}
                        | {f"eval/iw/{w}": loss for w in ("laplace", "uniform", "min_snr", "edm", "logit_normal")})
                in_log += time.perf_counter() - t
        (logged if with_log else plain).append(time.perf_counter() - t0)
    assert run.flush(timeout=120)
    sender_cpu = _thread_cpu(sender) - cpu0
    run.finish()
    train_s = sum(logged)
    step_ms = 1000 * sum(plain) / (20 * len(plain))
    n_logged = block * len(logged)
    print(f"step time of demo size S (batch 64, 1 thread): {step_ms:.1f} ms")
    print(f"log() on the training thread: {1e6 * in_log / n_logged:.0f} us per step = "
          f"{100 * in_log / train_s:.3f}% of training time")
    print(f"background sender CPU: {sender_cpu:.2f} s for {n_logged} logged steps = "
          f"{100 * sender_cpu / train_s:.3f}% of training time (it runs beside the training thread)")
    print(f"total logging cost (caller + sender CPU): {100 * (in_log + sender_cpu) / train_s:.2f}% "
          f"of step time [target < 1%], logging every {log_every} steps, evaluating every {eval_every}")
    wall = (sum(logged) - sum(plain)) / sum(plain)
    print(f"wall time with logging vs without (interleaved blocks, noisy): {100 * wall:+.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["all", "export", "overhead"], default="all")
    parser.add_argument("--store", type=Path, default=Path("/tmp/scaling-bench"), help="folder of the stores")
    parser.add_argument("--client", action="store_true", help="also time the MLflow-client reader")
    parser.add_argument("--steps", type=int, default=800, help="training steps of the overhead benchmark (half logged)")
    parser.add_argument("--log-every", type=int, default=10, help="log the training metrics every N steps")
    parser.add_argument("--eval-every", type=int, default=200, help="log the eval metrics every N steps")
    args = parser.parse_args()
    if args.what in ("all", "export"):
        bench_export(args.store, args.client)
    if args.what in ("all", "overhead"):
        bench_overhead(args.store, args.steps, args.log_every, args.eval_every)


if __name__ == "__main__":
    main()
