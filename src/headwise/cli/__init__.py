"""The ``headwise`` command: a thin layer over the library, one file per command.

Needs the ``cli`` extra (``pip install 'headwise[cli]'``).
"""

from headwise.cli._main import main

__all__ = ["main"]
