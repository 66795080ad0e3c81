"""The exceptions `scaling` raises on bad input or failed work.

Every error names the problem and, where there is one, the fix. The CLI turns a `ScalingError`
into a one-line message and exit status 2 (bad input) or 1 (work that failed); never a traceback.
"""

from __future__ import annotations


class ScalingError(Exception):
    """Base class: a problem the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class SpecError(ScalingError):
    """A sweep file (or another input file) is malformed. `path` is the dotted key, e.g. `sizes.M.width`."""

    exit_code = 2

    def __init__(self, message: str, path: str = "", source: str = ""):
        self.message = message
        self.path = path
        self.source = source
        where = f"{path}: " if path else ""
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where}{message}")


class LaunchError(ScalingError):
    """A job could not be submitted, or died, or its backend is missing."""


class TrainError(ScalingError):
    """Training cannot go on (a NaN loss, a missing dataset); the last good checkpoint is kept."""


class TrackError(ScalingError):
    """The tracking store cannot be read or written, or a run is missing."""


class FitError(ScalingError):
    """A fit cannot be made from the data given (too few points, bad values, missing columns)."""

    exit_code = 2


class ReportError(ScalingError):
    """A report cannot be built from the inputs given."""
