"""goflame: a sampling profiler for running Go programs."""

__version__ = "0.1.0"
