"""Moved to :mod:`datasets.fixtures` (benchmarks use it too); this alias goes once no test imports it."""
from datasets.fixtures import *  # noqa: F403
