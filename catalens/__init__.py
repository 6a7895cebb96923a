"""Catalens: cross-modal product search (shared core used by the indexer and the query service)."""

__version__ = "0.1.0"
