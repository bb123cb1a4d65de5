"""One error hierarchy so users can catch tsembed's own failures apart from library bugs."""


class TsembedError(Exception):
    """Base class of every error tsembed raises on purpose."""


class ConfigError(TsembedError, ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class TaskError(ConfigError):
    """A task the model cannot take: it has no task hints, or not this one. ``code`` is the API error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class DataError(TsembedError, ValueError):
    """Input data is malformed; the message names the file, row and field."""


class AdapterError(TsembedError, ValueError):
    """Adapters cannot be attached, saved or loaded; the message lists the modules or keys."""


class MissingExtraError(TsembedError, ImportError):
    """An optional dependency is not installed; the message names the package and the extra that installs it."""


class StorageError(TsembedError, OSError):
    """A file could not be written (the disk is full, or the write failed part-way); the message names the file.

    Also an ``OSError``, so code that catches those still does."""
