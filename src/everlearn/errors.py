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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-line error that wraps a library's several-line one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
