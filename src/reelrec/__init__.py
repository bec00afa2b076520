"""reelrec: a hybrid recommendation engine for streaming catalogs (see docs/architecture.md)."""

__version__ = "0.1.0"
