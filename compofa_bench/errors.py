"""Exception families, one per domain.

The CLI catches :class:`CompofaError` and prints ``error: <message>`` on one line with exit
code 2. Anything else escaping to the top is a bug and keeps its traceback.
"""

from __future__ import annotations


class CompofaError(Exception):
    """Base of every error a user can cause and fix."""


class ArchError(CompofaError, ValueError):
    """An architecture is malformed or outside its search space."""


class SpaceError(CompofaError, ValueError):
    """Unknown search space, or a bad space configuration (resolutions, width)."""


class SupernetError(CompofaError):
    """A supernet cannot be built or a checkpoint does not fit it."""


class CheckpointError(SupernetError):
    """A checkpoint is unreadable or its keys/shapes differ from the supernet's."""


class DeviceError(CompofaError):
    """A device spec is unknown or invalid, or the device cannot be reached or used."""


class MeasurementError(CompofaError):
    """A measurement could not be taken or its protocol is invalid."""


class StoreError(CompofaError):
    """The results store cannot be opened, written, or has an incompatible schema."""


class LutError(CompofaError):
    """A latency lookup table is malformed, lacks keys, or does not fit the request."""


class PredictorError(CompofaError):
    """An accuracy predictor file or its training data is invalid."""


class SearchError(CompofaError):
    """A search cannot be carried out (no feasible arch, bad targets)."""


class ExportError(CompofaError):
    """Exporting a subnet failed or its parity check did not pass."""


class TrainError(CompofaError):
    """A training recipe, run directory or resume state is invalid."""


class DataError(CompofaError):
    """A dataset is missing or malformed."""


class MissingDependencyError(CompofaError):
    """An optional package is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}': pip install 'compofa-bench[{extra}]'"
        )
        self.package = package
        self.extra = extra


class LockBusyError(CompofaError):
    """Another timing run holds the CPUs (or device) this one needs, and this one may not wait."""
