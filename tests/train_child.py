"""A job in its own process, for the trainer's tests: `python -m tests.train_child WORKDIR JSON_OVERRIDES`.

Runs `JobRunner` on the tiny sweep (no tracker unless the overrides name a `tracking_uri`) and prints the
`JobResult` as JSON on its last line. With `"chain": true` a Python SIGTERM handler is installed first, as
submitit does; it records that it was called (after the checkpoint) in `<workdir>/chained.json`.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from scaling.train import JobRunner
from tests.train_fixtures import tiny


def main() -> None:
    workdir = Path(sys.argv[1])
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    chain = options.pop("chain", False)
    uri = options.pop("tracking_uri", None)
    spec, job = tiny(workdir, tracking_uri=uri, trainer=options.pop("trainer", None), **options)
    runner = JobRunner(spec, job, track=uri is not None)
    if chain:
        def previous(signum, frame):  # what submitit's handler would do: ask for the requeued runner
            again = runner.checkpoint()
            steps = sorted(int(p.stem.split("-")[1]) for p in Path(job.workdir, "checkpoints").glob("step-*.json"))
            Path(workdir, "chained.json").write_text(json.dumps({"signal": signum, "checkpoints": steps,
                                                                 "requeued": repr(again)}))
        signal.signal(signal.SIGTERM, previous)
    print("started", flush=True)
    result = runner()
    print(result.to_json().replace("\n", ""), flush=True)


if __name__ == "__main__":
    main()
