"""goflame: a sampling profiler for running Go programs."""

__version__ = "0.1.0"


def attach(pid: int):
    """Open a running Go process by pid: `with goflame.attach(pid) as t: t.goroutine_stacks()`."""
    from goflame.target import Target

    return Target(pid)
