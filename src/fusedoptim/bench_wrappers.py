"""``fusedoptim bench --wrappers``: the extra pass of each optimizer wrapper (Lookahead's
synchronisation, MultiSteps' accumulation) against a roofline kernel moving the same bytes,
timed interleaved in one run (issue 13's target: the extra pass costs at most the roofline time
of the bytes it moves)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from . import _kernels, bench
from .optim.sgd import SGD
from .wrappers import Lookahead, MultiSteps


def _touch(arrays: list[Any], name: str, grads: list[Any] | None = None) -> Callable[[], object]:
    plan = _kernels.Plan(arrays, [None] * len(arrays), 0, 1,
                         [f"roofline buffer {i}" for i in range(len(arrays))])
    if grads is not None:
        plan.bind(grads)
    plan.active_array[...] = 1
    kid = _kernels.KERNEL_IDS[name]
    return lambda: plan.run(kid)


def wrapper_rows(n: int) -> list[tuple[str, int, Callable[[], object], Callable[[], object]]]:
    """(label, transfers per element, the wrapper's pass, the same-traffic roofline pass)."""
    p, g = bench._data(n, np.float32)
    la = Lookahead(SGD([p], lr=1e-3), k=1, alpha=0.5)
    # Lookahead's pass reads and writes the params and the slow weights (4 transfers):
    # touch_w1 over two arrays of the same size moves the same bytes.
    a, b = p.copy(), p.copy()
    rows: list[tuple[str, int, Callable[[], object], Callable[[], object]]] = [
        ("Lookahead sync (p, slow rw)", 4, la.sync, _touch([a, b], "touch_w1"))]
    acc_p = np.zeros(n, np.float32)
    ms = MultiSteps(SGD([acc_p], lr=1e-3), every_k=2 ** 62)
    ms.step([g])            # the window's first micro-batch; the timed calls add (mode 0)
    # acc = acc + g: read acc and g, write acc (3 transfers) = touch_rw1.
    c = np.zeros(n, np.float32)
    rows.append(("MultiSteps accumulate (acc += g)", 3, lambda: ms.step([g]),
                 _touch([c], "touch_rw1", [g])))
    # The first micro-batch of a window writes acc = g (read g, write acc; 2 transfers): the
    # zeroing of the window before, folded in. touch_w1 on one array moves the same bytes.
    plan = ms._plans[0][0]
    plan.bind([g])
    acc_id = _kernels.KERNEL_IDS["accumulate"]

    def first() -> None:
        plan.hp_array[:, 0] = 1.0
        plan.run(acc_id)
    d = np.zeros(n, np.float32)
    rows.append(("MultiSteps first (acc = g)", 2, first, _touch([d], "touch_w1")))
    return rows


def run_wrappers(sizes: Sequence[int], threads: Sequence[int], min_time: float = 0.2,
                 repeat: int = 5, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    header = (f"{'wrapper pass':<34}{'n':>9}{'thr':>4}{'pass ms':>10}{'roofline ms':>13}"
              f"{'GB/s':>8}{'% roofline':>12}")
    print(header, file=out)
    print("-" * len(header), file=out)
    results: list[dict[str, Any]] = []
    with bench._thread_counts(threads, None) as thread_counts:
        for n in sizes:
            rows = wrapper_rows(n)
            for nt in thread_counts():
                for label, transfers, fn, touch in rows:
                    best = bench._timeit_interleaved({"pass": fn, "touch": touch}, min_time,
                                                     repeat)
                    r = dict(wrapper=label, n=n, threads=nt, pass_s=best["pass"],
                             roofline_s=best["touch"], transfers=transfers)
                    results.append(r)
                    gbs = transfers * 4 * n / best["pass"] / 1e9
                    print(f"{label:<34}{n:>9.0e}{nt:>4}{best['pass'] * 1e3:>10.2f}"
                          f"{best['touch'] * 1e3:>13.2f}{gbs:>8.1f}"
                          f"{100 * best['touch'] / best['pass']:>11.1f}%", file=out,
                          flush=True)
    return results
