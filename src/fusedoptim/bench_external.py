"""Outside implementations of the optimizers torch.optim lacks, for ``fusedoptim bench
--external``: each optimizer's official PyTorch release where one is installable (the
conformance extra), else Optax under ``jax.jit``, timed interleaved with the fused step.

A factory takes float32 NumPy copies of the bench's param and grad and returns ``(step, label)``:
``step()`` runs one whole optimizer step (for JAX, until the result is ready) and ``label``
names the implementation and path. It raises ImportError when its package is absent, and the
row then reads '-'. Register one with ``@external("key")`` and name the key in a
``bench.BenchCase(..., external="key")``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, TextIO

import numpy as np

from . import bench

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._typing import FloatArray

Factory = Callable[["FloatArray", "FloatArray"], "tuple[Callable[[], object], str]"]
EXTERNAL: dict[str, Factory] = {}


def external(key: str) -> Callable[[Factory], Factory]:
    """Register a factory under `key` (see the module docstring)."""
    def register(factory: Factory) -> Factory:
        if key in EXTERNAL:
            raise ValueError(f"external implementation {key!r} is registered twice")
        EXTERNAL[key] = factory
        return factory
    return register


def torch_step(torch: Any, cls: Any, p: FloatArray, g: FloatArray,
               **kwargs: Any) -> Callable[[], object]:
    """A torch optimizer class's step on one CPU tensor sharing memory with `p`, its grad
    `g`; the first step (which allocates the state) runs here, outside the timing."""
    tp = torch.from_numpy(p)
    tp.grad = torch.from_numpy(g)
    opt = cls([tp], **kwargs)
    opt.step()
    step: Callable[[], object] = opt.step
    return step


def jax_step(update: Callable[..., Any], params: Any, state: Any,
             grad: Any) -> Callable[[], object]:
    """A jitted ``(params, state, grad) -> (params, state)`` Optax step, carried from call to
    call and waited for; compiled here, outside the timing."""
    jax: Any = __import__("jax")     # untyped package: used through Any
    jitted = jax.jit(update, donate_argnums=(0, 1))
    carry = list(jitted(params, state, grad))
    jax.block_until_ready(carry)

    def step() -> object:
        carry[:] = jitted(carry[0], carry[1], grad)
        return jax.block_until_ready(carry[0])
    return step


# -- Schedule-Free: the schedulefree package (Meta's release), its foreach path ----------------

def _schedulefree_step(cls_name: str, p: FloatArray, g: FloatArray,
                       **kwargs: Any) -> tuple[Callable[[], object], str]:
    torch: Any = __import__("torch")
    schedulefree: Any = __import__("schedulefree")
    tp = torch.from_numpy(p)
    tp.grad = torch.from_numpy(g)
    opt = getattr(schedulefree, cls_name)([tp], foreach=True, **kwargs)
    opt.train()
    opt.step()      # creates the state, outside the timing
    # The package normalises p.grad in place each step, so its grad drifts from the bench's
    # (it stays finite); the work per step is the same.
    step: Callable[[], object] = opt.step
    from importlib.metadata import version
    return step, f"schedulefree {version('schedulefree')} {cls_name}, foreach"


@external("schedulefree_adamw")
def _schedulefree_adamw(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    return _schedulefree_step("AdamWScheduleFree", p, g, lr=2.5e-3, weight_decay=1e-2)


@external("schedulefree_sgd")
def _schedulefree_sgd(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    return _schedulefree_step("SGDScheduleFree", p, g, lr=1.0, weight_decay=1e-4)


@external("bnb_ademamix")
def _bnb_ademamix(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """bitsandbytes' 32-bit AdEMAMix on CPU (the issue's comparator; bnb's is the release)."""
    torch: Any = __import__("torch")
    bnb: Any = __import__("bitsandbytes")
    step = torch_step(torch, bnb.optim.AdEMAMix, p, g, lr=1e-3, weight_decay=1e-2)
    return step, f"bitsandbytes {bnb.__version__} AdEMAMix (32-bit, CPU)"


@external("optax_adopt")
def _optax_adopt(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """Optax's ADOPT under jax.jit: the authors' release (github.com/iShohei220/adopt,
    torch-adopt) is not on PyPI, so it is not installable here."""
    jnp: Any = __import__("jax.numpy").numpy
    optax: Any = __import__("optax.contrib").contrib
    apply_updates: Any = __import__("optax").apply_updates
    tx = optax.adopt(1e-3, b1=0.9, b2=0.9999, eps=1e-6)
    params = jnp.asarray(p)

    def update(params: Any, state: Any, grad: Any) -> tuple[Any, Any]:
        u, state = tx.update(grad, state, params)
        return apply_updates(params, u), state
    return (jax_step(update, params, tx.init(params), jnp.asarray(g)),
            "optax.contrib.adopt under jax.jit (CPU)")


@external("madgrad")
def _madgrad(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """The official release (facebookresearch's `madgrad` package): a per-tensor loop, no
    foreach or fused path."""
    madgrad: Any = __import__("madgrad")     # untyped package: used through Any
    torch = __import__("torch")
    return (torch_step(torch, madgrad.MADGRAD, p, g, lr=1e-2),
            "madgrad.MADGRAD (official release, torch, per tensor)")


@external("optax.yogi")
def _optax_yogi(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """Yogi has no official PyTorch release on PyPI: Optax's, under jax.jit."""
    jnp: Any = __import__("jax.numpy", fromlist=["numpy"])
    optax: Any = __import__("optax")
    tx = optax.yogi(1e-2)

    def update(params: Any, state: Any, grad: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grad, state, params)
        return optax.apply_updates(params, updates), state
    params = jnp.asarray(p)
    return (jax_step(update, params, tx.init(params), jnp.asarray(g)),
            f"optax {optax.__version__} yogi, jax.jit")


@external("prodigyopt")
def _prodigyopt(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """The official release (prodigyopt); it has no foreach or fused path: a per-tensor
    loop of torch ops, with two .item() syncs per tensor."""
    torch: Any = __import__("torch")
    prodigyopt: Any = __import__("prodigyopt")
    from importlib.metadata import version
    return (torch_step(torch, prodigyopt.Prodigy, p, g, lr=1.0, weight_decay=1e-2),
            f"prodigyopt {version('prodigyopt')} Prodigy (no foreach path)")


def run_external(cases: Sequence[bench.BenchCase], sizes: Sequence[int],
                 threads: Sequence[int], min_time: float = 0.2, repeat: int = 5,
                 out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Fused step vs the outside implementation, interleaved, float32: one row per case,
    size and thread count."""
    torch = bench._optional_torch(True)
    header = (f"{'optimizer':<20}{'n':>11}{'thr':>4}{'fused Gel/s':>13}{'ext Gel/s':>11}"
              f"{'x ext':>8}  implementation")
    print(header, file=out)
    print("-" * (len(header) + 20), file=out)
    rows: list[dict[str, Any]] = []
    with bench._thread_counts(threads, torch) as thread_counts:
        for case in cases:
            assert case.external is not None
            for n in sizes:
                for nt in thread_counts():
                    fns = {"fused": bench.fused_step_fn(case, n, np.float32)}
                    label = "-"
                    try:
                        p, g = bench._data(n, np.float32)
                        fns["ext"], label = EXTERNAL[case.external](p, g)
                    except ImportError as exc:
                        label = f"- ({exc.name or exc} not installed)"
                    best = bench._timeit_interleaved(fns, min_time, repeat)
                    row = dict(optimizer=case.name, n=n, threads=nt, fused_s=best["fused"],
                               external_s=best.get("ext"), implementation=label)
                    rows.append(row)
                    ext = best.get("ext")
                    print(f"{case.name:<20}{n:>11}{nt:>4}{n / best['fused'] / 1e9:>13.3f}"
                          + (f"{n / ext / 1e9:>11.3f}{ext / best['fused']:>8.1f}"
                             if ext else f"{'-':>11}{'-':>8}") + f"  {label}",
                          file=out, flush=True)
    return rows


# -- Adan, AdaBelief ----------------------------------------------------------------------------

@external("adan")
def _adan_optax(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """optax.adan under jax.jit: the official release (github.com/sail-sg/Adan) is not on PyPI.
    The bench row's lr and weight decay; eps_root=0 as the official rule (Optax's decay is the
    no_prox form, the row's the proximal one: the same traffic and arithmetic)."""
    jax: Any = __import__("jax")        # untyped packages: used through Any
    optax: Any = __import__("optax")
    tx = optax.adan(learning_rate=1e-3, eps_root=0.0, weight_decay=2e-2)
    params, grad = jax.numpy.asarray(p), jax.numpy.asarray(g)

    def update(params: Any, state: Any, grad: Any) -> tuple[Any, Any]:
        u, state = tx.update(grad, state, params)
        return optax.apply_updates(params, u), state
    return (jax_step(update, params, tx.init(params), grad),
            "optax.adan, jax.jit (sail-sg/Adan is not on PyPI)")


@external("adabelief")
def _adabelief_official(p: FloatArray, g: FloatArray) -> tuple[Callable[[], object], str]:
    """The official adabelief-pytorch (0.2.1): a per-tensor for-loop, it has no foreach or
    fused path. Its construction prints flag lines even with print_change_log=False: dropped."""
    import contextlib
    import io

    torch: Any = __import__("torch")
    adabelief_pytorch: Any = __import__("adabelief_pytorch")
    with contextlib.redirect_stdout(io.StringIO()):
        step = torch_step(torch, adabelief_pytorch.AdaBelief, p, g, lr=1e-3, weight_decay=1e-2,
                          print_change_log=False)
    return step, "adabelief-pytorch 0.2.1 (for-loop; no foreach path)"
