"""User-facing errors: each prints as one line naming the file, the field and what is expected."""


class EverlearnError(Exception):
    """Base class; the CLI prints these as a single line without a traceback."""


class ConfigError(EverlearnError):
    """A config file, field or command-line override is invalid."""


class DataError(EverlearnError):
    """A data file or record is missing or malformed."""


class ModelError(EverlearnError):
    """A model cannot be found or loaded."""


class ResumeError(EverlearnError):
    """A run directory cannot be resumed."""


class TrainingError(EverlearnError):
    """Training hit a fault (e.g. a non-finite loss)."""


class ExportError(EverlearnError):
    """A run's stage cannot be exported (missing, not kept, or not expressible as PEFT/HF)."""
