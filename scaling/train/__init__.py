"""Training one job: `JobRunner(spec, job)()` builds, trains or resumes, evaluates and checkpoints.

See `scaling.train.runner` (the runner, `JobResult`, `TrainContext` for your own trainer),
`scaling.train.loop` (the built-in trainer), `scaling.train.checkpoint` (atomic, verified checkpoints),
`scaling.train.dist` (`dist_env()`: rank and world size from torchrun or SLURM) and
`scaling.train.signals` (stop signals that chain to the previous handler).
"""

from scaling.train.dist import DistEnv, dist_env
from scaling.train.runner import JobResult, JobRunner, MemoryRunLog, TrainContext, load_trainer
from scaling.train.schedule import lr_at

__all__ = ["DistEnv", "JobResult", "JobRunner", "MemoryRunLog", "TrainContext", "dist_env", "load_trainer", "lr_at"]
