"""Run a piece of a test once per OpenMP thread count: the scaffold of every "bitwise the same
on 1, 2 and 3 threads" check (the driver's static schedule promises it; tests/property draws
thread counts too)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

from threadpoolctl import threadpool_limits

import fusedoptim as fo

THREAD_COUNTS = (1, 2, 3)


@contextlib.contextmanager
def num_threads(n: int, via: str = "fusedoptim") -> Iterator[None]:
    """fusedoptim's thread count at `n` for the block, restored after. `via`: "fusedoptim"
    (fo.set_num_threads) or "threadpoolctl" (threadpool_limits, the same OpenMP knob)."""
    if via == "threadpoolctl":
        with threadpool_limits(n):
            yield
        return
    assert via == "fusedoptim", via
    before = fo.get_num_threads()
    fo.set_num_threads(n)
    try:
        yield
    finally:
        fo.set_num_threads(before)


def per_thread_count(run: Callable[[], Any], counts: Sequence[int] = THREAD_COUNTS,
                     via: str = "fusedoptim") -> list[Any]:
    """[run() on n threads for n in counts]."""
    results = []
    for n in counts:
        with num_threads(n, via):
            results.append(run())
    return results


def assert_same_on_every_thread_count(run: Callable[[], Any],
                                      counts: Sequence[int] = THREAD_COUNTS,
                                      what: Any = "") -> None:
    """run() (returning bytes, or anything comparable with ==) gives the same result on every
    thread count in `counts`."""
    results = per_thread_count(run, counts)
    for n, result in zip(counts[1:], results[1:]):
        assert result == results[0], (f"{n} threads differ from {counts[0]}", what)
