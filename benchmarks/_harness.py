"""The benchmark harness lives in :mod:`headwise.bench.harness`; scripts here import it as ``_harness``."""

from headwise.bench.harness import *  # noqa: F403
