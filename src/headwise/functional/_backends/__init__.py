"""Attention backends. Each module defines ``BACKEND``; see ``_dispatch``."""
