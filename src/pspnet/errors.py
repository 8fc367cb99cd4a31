"""Exception types. The CLI prints these as one-line errors instead of tracebacks."""


class PSPNetError(Exception):
    """Base class for every error raised on bad user input."""


class ConfigError(PSPNetError, ValueError):
    """An unknown config key, a value of the wrong type, or a value out of range."""


class CheckpointError(PSPNetError):
    """A checkpoint that is missing, truncated, of an unknown format or that does not match the model."""


class DataError(PSPNetError, ValueError):
    """An image or mask that is missing, unreadable, or inconsistent with the dataset's classes."""


class ImageTooLargeError(DataError):
    """An image with more pixels than the cap, refused from its header before any pixel is decoded."""


class NotAnImageError(DataError):
    """Bytes (a file or an upload) in no image format that Pillow recognises."""


class ExportError(PSPNetError):
    """A model that cannot be exported, or an exported file that does not reproduce the model (nothing is written)."""
