"""Domain errors of histoatlas.

Every error names its culprit (slide, file, key, layer) and, where it can, says what
to do. All derive from :class:`HistoatlasError`, so callers can catch them together.
"""

from __future__ import annotations


class HistoatlasError(Exception):
    """Base class of every error histoatlas raises on purpose."""


class SlideError(HistoatlasError):
    """A slide cannot be found, opened or read."""


class MPPError(SlideError):
    """A slide has no usable microns-per-pixel value."""


class TileReadError(SlideError):
    """A tile of an opened slide cannot be read (truncated or corrupt file)."""


class SheetError(HistoatlasError):
    """The slide sheet is malformed (missing column, bad or duplicate id, ...)."""


class ConfigError(HistoatlasError):
    """A configuration value is missing, of the wrong type or out of range."""


class ModelError(HistoatlasError):
    """A model cannot be found, loaded or does not fit the configuration."""


class LayerError(ModelError):
    """A requested layer does not exist in the model."""


class EmptyDatasetError(HistoatlasError):
    """A step needs tiles but the cohort (or selection) has none."""
