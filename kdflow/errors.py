"""Errors a user can cause. Each says what was wrong and how to fix it.

The CLI prints them as one line without a traceback; components let them fail the task
with the same message.
"""


class KdflowError(Exception):
    """Base of every error kdflow raises for bad input or a refused operation."""


class ConfigError(KdflowError, ValueError):
    """A setting is invalid. `option` names it as the CLI spells it, when known."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class DataError(KdflowError):
    """A dataset cannot be read or does not have the shape kdflow needs."""


class DataValidationError(DataError):
    """A dataset was read but failed its data contract."""


class ModelFormatError(KdflowError):
    """A model artifact is missing, tampered with, or not safetensors + spec.json."""


class RegistryError(KdflowError):
    """The model registry refused an operation or could not be reached."""
