"""Launchers: run a sweep's jobs locally (submitit's local executor), on SLURM (submitit) or on Ray.

The only package that imports submitit and ray (each backend module imports its own).
"""

from scaling.launch.base import STATES, Handle, JobStatus, Launcher, get_launcher, log_dir

__all__ = ["STATES", "Handle", "JobStatus", "Launcher", "get_launcher", "log_dir"]
