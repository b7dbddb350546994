"""Attention backends.  Each module defines ``BACKEND``; see ``headwise.functional._dispatch``."""
