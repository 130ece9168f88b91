"""pmon: a plugin-based process monitor for control-system servers."""

__version__ = "0.1.0"
