"""``fusedoptim bench --torch``: the drop-in against torch.optim, side by side in one run.

Rows (issue 14's targets):
* one AdamW step over 1000 params of 1000 elements, fot.AdamW vs torch.optim.AdamW(fused=True)
  (>= 5x), with the grads kept (zero_grad(set_to_none=False)) and replaced every step (the
  set_to_none loop: new grad tensors, new views);
* one 1e5-element param, 1 thread (>= 2x torch fused);
* clip_grad_norm_ over 1000 params, fot vs torch's foreach (>= 10x);
* end to end: a 2-layer TransformerEncoder (d_model 256, 4 heads, 8 tokens x 32 batch), 100
  training steps, total time and the optimizer's share, fot.AdamW vs torch fused (the share
  must fall by >= 3x);
* the step right after a torch matmul against the step alone (spinning OpenMP threads).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch

from .. import _config
from ..bench import _timeit_interleaved
from . import clip_grad_norm_

AdamW: Any = getattr(sys.modules[__package__ or "fusedoptim.torch"], "AdamW")


def _params(count: int, size: int, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(size, generator=gen)) for _ in range(count)]
    for p in ps:
        p.grad = torch.randn(size, generator=gen) * 1e-3
    return ps


def step_fns(count: int, size: int) -> dict[str, Callable[[], object]]:
    """One AdamW step of `count` params of `size` elements: fot, torch fused, torch foreach;
    and fot with its grads replaced by new tensors before every step."""
    fns: dict[str, Callable[[], object]] = {}
    ours = _params(count, size)
    opt = AdamW(ours, lr=1e-3)
    fns["fot.AdamW"] = opt.step
    swapped = _params(count, size)
    opt2 = AdamW(swapped, lr=1e-3)
    pools = [[p.grad.clone() for p in swapped] for _ in range(2)]
    turn = [0]

    def replaced() -> None:
        turn[0] ^= 1
        for p, g in zip(swapped, pools[turn[0]]):
            p.grad = g
        opt2.step()
    fns["fot.AdamW, new grad tensors"] = replaced
    for label, kw in (("torch AdamW fused=True", dict(fused=True)),
                      ("torch AdamW foreach", dict(foreach=True))):
        tp = _params(count, size)
        topt = torch.optim.AdamW(tp, lr=1e-3, **kw)
        fns[label] = topt.step
    tp = _params(count, size)
    topt2 = torch.optim.AdamW(tp, lr=1e-3, fused=True)
    tpools = [[p.grad.clone() for p in tp] for _ in range(2)]

    def torch_replaced() -> None:
        turn[0] ^= 1
        for p, g in zip(tp, tpools[turn[0]]):
            p.grad = g
        topt2.step()
    fns["torch AdamW fused=True, new grad tensors"] = torch_replaced
    return fns


def clip_fns(count: int, size: int) -> dict[str, Callable[[], object]]:
    """clip_grad_norm_ over `count` params: fot's over the params of a fot optimizer (whose
    grad views it shares, as in a training loop), fot's over params no optimizer steps (each
    grad viewed in the call), and torch's foreach."""
    ps = _params(count, size)
    opt = AdamW(ps, lr=1e-3)          # owns the grad views clip reuses (kept alive below)
    lone = _params(count, size)
    # max_norm = inf measures and scales nothing on both sides, so repeats see the same grads
    return {"fot.clip_grad_norm_": lambda: clip_grad_norm_(opt.param_groups[0]["params"],
                                                           float("inf")),
            "fot.clip_grad_norm_, no optimizer": lambda: clip_grad_norm_(lone, float("inf")),
            "torch clip_grad_norm_ foreach": lambda: torch.nn.utils.clip_grad_norm_(
                ps, float("inf"), foreach=True)}


class _Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # torch's defaults otherwise (dim_feedforward 2048, dropout 0.1): 3.16M params
        layer = torch.nn.TransformerEncoderLayer(d_model=256, nhead=4, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2,
                                                   enable_nested_tensor=False)
        self.head = torch.nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(x).mean(dim=1))
        return out


def end_to_end(opt_factory: Callable[[Any], torch.optim.Optimizer], steps: int = 100
               ) -> tuple[float, float, int]:
    """(total seconds, seconds inside opt.step, param count) for `steps` training steps."""
    torch.manual_seed(0)
    model = _Encoder()
    count = sum(p.numel() for p in model.parameters())
    opt = opt_factory(model.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, 256, generator=gen)
    y = torch.randn(32, 1, generator=gen)
    in_step = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        t1 = time.perf_counter()
        opt.step()
        in_step += time.perf_counter() - t1
    return time.perf_counter() - t0, in_step, count


def after_matmul_fns(size: int = 1_000_000) -> dict[str, Callable[[], object]]:
    """fot.AdamW's step alone, and right after a torch matmul (whose OpenMP threads may
    still spin when the step starts)."""
    ps = _params(1, size)
    opt = AdamW(ps, lr=1e-3)
    a = torch.randn(256, 256)

    def after() -> None:
        torch.mm(a, a)
        opt.step()
    return {"fot.AdamW step": opt.step, "torch.mm 256^2": lambda: torch.mm(a, a),
            "torch.mm then fot.AdamW step": after}


def run_torch(threads: Sequence[int], min_time: float = 0.2, repeat: int = 7,
              out: TextIO = sys.stdout) -> dict[str, Any]:
    """Print the drop-in's rows, each timed interleaved (best of `repeat`)."""
    results: dict[str, Any] = {}
    saved = (_config.get_num_threads(), torch.get_num_threads())
    try:
        for nt in threads:
            _config.set_num_threads(nt)
            torch.set_num_threads(nt)
            print(f"threads: {nt} (fusedoptim and torch)", file=out)
            t = _timeit_interleaved(step_fns(1000, 1000), min_time, repeat)
            _print_rows("AdamW step, 1000 params x 1000", t, "fot.AdamW",
                        "torch AdamW fused=True", 5.0, out)
            results[f"step1000/{nt}"] = t
            t = _timeit_interleaved(clip_fns(1000, 1000), min_time, repeat)
            _print_rows("clip_grad_norm_, 1000 params x 1000", t, "fot.clip_grad_norm_",
                        "torch clip_grad_norm_ foreach", 10.0, out)
            results[f"clip/{nt}"] = t
            t = _timeit_interleaved(after_matmul_fns(), min_time, repeat)
            _print_rows("after a torch matmul (1e6 AdamW)", t, "fot.AdamW step", None, None,
                        out)
            results[f"after_matmul/{nt}"] = t
        _config.set_num_threads(1)
        torch.set_num_threads(1)
        fns = step_fns(1, 100_000)
        t = _timeit_interleaved(fns, min_time, repeat)
        _print_rows("AdamW step, one 1e5 param, 1 thread", t, "fot.AdamW",
                    "torch AdamW fused=True", 2.0, out)
        results["one1e5"] = t
        _config.set_num_threads(max(threads))
        torch.set_num_threads(max(threads))
        e2e: dict[str, list[tuple[float, float, int]]] = {"fot": [], "torch": []}
        for _ in range(3):                            # interleaved, best of 3
            e2e["fot"].append(end_to_end(lambda ps: AdamW(ps, lr=1e-4)))
            e2e["torch"].append(end_to_end(lambda ps: torch.optim.AdamW(ps, lr=1e-4,
                                                                        fused=True)))
        best = {k: min(v, key=lambda r: r[1]) for k, v in e2e.items()}
        print(f"end to end, 2-layer TransformerEncoder (d_model 256, 4 heads, 8 x 32), 100 "
              f"steps, {max(threads)} threads:", file=out)
        for k, (total, opt_s, count) in best.items():
            # AdamW moves 28 bytes per param (reads p, g, m, v; writes p, m, v)
            print(f"    {k:<6} total {total:7.3f} s   optimizer {opt_s * 1e3:8.1f} ms "
                  f"({opt_s / total:6.1%}; {28 * count * 100 / opt_s / 1e9:5.1f} GB/s over "
                  f"{count / 1e6:.2f}M params)", file=out)
        ratio = best["torch"][1] / best["fot"][1]
        print(f"    optimizer time falls {ratio:.2f}x (target >= 3x: "
              f"{'met' if ratio >= 3 else 'NOT met'})", file=out)
        results["end_to_end"] = best
    finally:
        _config.set_num_threads(saved[0])
        torch.set_num_threads(saved[1])
    return results


def _print_rows(title: str, t: dict[str, float], ours: str, theirs: str | None,
                target: float | None, out: TextIO) -> None:
    print(f"  {title}", file=out)
    for label, sec in t.items():
        print(f"    {label:<34}{sec * 1e6:>11.1f} us{sec / t[ours]:>8.2f}x", file=out)
    if theirs is not None and target is not None:
        r = t[theirs] / t[ours]
        print(f"    target {theirs} / {ours}: {r:.2f}x (>= {target}x: "
              f"{'met' if r >= target else 'NOT met'})", file=out)
