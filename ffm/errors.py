"""User-facing errors: each names the culprit and the fix; the CLI prints one line and exits 2."""

from __future__ import annotations

__all__ = [
    "AggregationFailed", "CheckpointError", "ConfigError", "DataError", "FfmError", "ModelError", "RoundFailedError"]


class FfmError(Exception):
    """Base class of every error that a user can fix by changing input (config, data, files)."""


class ConfigError(FfmError):
    """A config key that does not exist, or a value of the wrong type or out of range."""


class DataError(FfmError):
    """A data file or column that is missing or unusable."""


class ModelError(FfmError):
    """A model that cannot be loaded offline from the place the config names."""


class CheckpointError(FfmError):
    """A checkpoint or run directory that cannot be read back."""


class RoundFailedError(FfmError):
    """A round in which no client returned a usable update."""


class AggregationFailed(Exception):
    """The aggregation of one round could not complete (e.g. too few shares to unmask); the round fails and the
    global state stays as it was."""
