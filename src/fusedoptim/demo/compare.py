"""``fusedoptim compare``: the same MLP, data and loop, trained once per optimizer.

Every run starts from the same initial weights and sees the same mini-batches in the same order, so
the curves differ only because the optimizer differs. The time spent inside ``opt.step()`` is
measured separately from the wall time of the whole run.

With ``reference=True`` each run also drives the plain-NumPy ``fusedoptim.reference`` optimizer in
lockstep: both receive the identical gradient at every step (computed at the fused parameters), so
any parameter difference comes from the optimizer arithmetic alone and is not amplified by the
model. Agreement is judged with :data:`REF_RTOL` / :data:`REF_ATOL`.

Precision (``--precision``, ``--state-dtype``, ``--min-quantized-size``): ``precision`` puts the
params, and the grads the optimizer receives, in float32, bfloat16 or float16; half params get
float32 master weights in the optimizer (``master_weights=True``), and the MLP computes in float32
(:mod:`fusedoptim.demo.mlp`). ``state_dtype`` is passed to every optimizer. An optimizer that does
not support it (its constructor raises ValueError, e.g. int8 state on Adadelta) is skipped with a
note when the optimizers were not named (the default set or "all"), and is an error before any training
when they were named. Every run reports its state memory: the ``nbytes`` of every array in
``opt.state`` (moments, the float32 ``master_param``, int8/int4 codes and their ``*_absmax``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import ml_dtypes
import numpy as np

from . import DEFAULT_OPTIMIZERS, OPTIMIZERS, DemoError, optimizer_class, require, require_all
from .data import DIGITS_NEEDS, load_dataset
from .mlp import MLP, default_output
from ..swa_utils import AveragedParams

# Fused vs reference parameters must satisfy |p_fused - p_ref| <= REF_ATOL + REF_RTOL * |p_ref|
# elementwise at the end of every epoch (np.allclose semantics). Float32 rounds at ~6e-8 relative
# per operation; differently ordered arithmetic over a few thousand steps stays well inside 1e-4.
REF_RTOL = 1e-4
REF_ATOL = 1e-6

PLOT_NEEDS = ("matplotlib", "--plot (the PNG of curves; or pass --no-plot)")

# --precision name -> the dtype of the params and of the grads handed to the optimizer.
PRECISIONS = {"fp32": np.dtype(np.float32), "bf16": np.dtype(ml_dtypes.bfloat16),
              "fp16": np.dtype(np.float16)}
# --state-dtype values (fusedoptim's state_dtype strings).
STATE_DTYPES = ("float32", "bfloat16", "int8", "int4")
QUANTIZED_STATE = ("int8", "int4")
MB = 1e6  # the "state MB" column: 10^6 bytes
STATE_MB_NOTE = ("state MB: nbytes of every array in the optimizer state after training "
                 "(moments, float32 master_param, int8/int4 codes and their absmax), 1 MB = 1e6 B")


# --------------------------------------------------------------------------------- schedules
# --schedule name -> (when the scheduler steps, how to build it from fusedoptim.lr_scheduler).
# The classes carry torch's names and semantics; this table is the only place to add a schedule.
def _warmup_cosine(S, opt, epochs, steps_per_epoch):
    # Linear warm-up over the first 10% of steps (from lr/W), then cosine to 0.
    total = epochs * steps_per_epoch
    warm = max(1, round(0.1 * total))
    if warm >= total:  # too few steps to warm up and decay: plain cosine
        return S.CosineAnnealingLR(opt, T_max=total)
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm),
                                S.CosineAnnealingLR(opt, T_max=total - warm)], milestones=[warm])


SCHEDULES = {
    "cosine": ("step", lambda S, opt, epochs, spe: S.CosineAnnealingLR(opt, T_max=epochs * spe)),
    # Three plateaus whatever the number of epochs.
    "step": ("epoch", lambda S, opt, epochs, spe: S.StepLR(opt, step_size=max(1, epochs // 3),
                                                           gamma=0.3)),
    # Only the learning rate cycles: torch's default momentum cycling needs a momentum (or
    # beta1) in every optimizer, which plain SGD, Adagrad and Adadelta do not have.
    "onecycle": ("step", lambda S, opt, epochs, spe: S.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=epochs * spe,
        cycle_momentum=False)),
    "warmup-cosine": ("step", _warmup_cosine),
    "none": ("step", None),
}


class Schedule:
    """Drives one ``fusedoptim.lr_scheduler`` scheduler from the training loop."""

    def __init__(self, name, optimizer, epochs, steps_per_epoch):
        per, factory = SCHEDULES[name]
        self.per_epoch = per == "epoch"
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = None
        if factory is not None:
            try:
                import fusedoptim.lr_scheduler as S
            except ImportError:
                raise DemoError(f"--schedule {name} needs fusedoptim.lr_scheduler, which this "
                                "build lacks; use --schedule none") from None
            self.scheduler = factory(S, optimizer, epochs, steps_per_epoch)

    def after_step(self, steps_done):
        """Call after every optimizer step; ``steps_done`` counts steps taken so far."""
        if self.scheduler is not None and (not self.per_epoch
                                           or steps_done % self.steps_per_epoch == 0):
            self.scheduler.step()


def lr_trace(name, base_lr, epochs, steps_per_epoch):
    """The learning rate every step of a run uses under schedule ``name`` (for tests and docs)."""

    class _Groups:  # schedulers need only param_groups with an 'lr'
        param_groups = [{"lr": base_lr}]

    holder = _Groups()
    schedule = Schedule(name, holder, epochs, steps_per_epoch)
    lrs = []
    for t in range(epochs * steps_per_epoch):
        lrs.append(holder.param_groups[0]["lr"])
        schedule.after_step(t + 1)
    return lrs


# --------------------------------------------------------------------------------- config
@dataclass
class CompareConfig:
    """Everything that defines a comparison; the CLI fills it, tests may build it directly."""

    optimizers: list = field(default_factory=lambda: list(DEFAULT_OPTIMIZERS))
    explicit: bool = False  # optimizers named by the user: a missing one is an error, not a skip
    epochs: int = 20
    batch_size: int = 64
    schedule: str = "cosine"
    lr: float | None = None  # one learning rate for every optimizer
    lr_per: dict = field(default_factory=dict)  # per-optimizer learning rates (win over lr)
    dataset: str = "digits"
    data_path: str | None = None
    val_frac: float = 0.2
    seed: int = 0
    hidden: tuple = (64,)
    activation: str = "relu"
    output: str | None = None  # None: the loss's natural output (sigmoid for bce, else softmax)
    loss: str = "cce"
    elu_alpha: float = 1.0
    dtype: str = "float32"
    precision: str | None = None  # fp32/bf16/fp16 params and grads; None: params in `dtype`
    state_dtype: str | None = None  # passed to every optimizer; None: the library default
    min_quantized_size: int | None = None  # int8/int4 state; None: the library default (4096)
    reference: bool = False
    ema: float | None = None  # also keep an EMA of the weights with this decay (swa_utils)
    plot: str | None = None
    json: str | None = None
    progress: bool = True
    # Data-parallel under mpirun (fusedoptim.distributed): each rank takes its slice of every
    # mini-batch; grads are averaged by allreduce_ (zero=0) or ZeroRedundancyOptimizer
    # (zero=1 or 2). Rank 0 prints the table and writes the outputs.
    distributed: bool = False
    zero: int = 0


# --------------------------------------------------------------------------------- progress
class _Progress:
    """A tqdm bar per run on a terminal; otherwise plain lines (logs, pipes, or no tqdm)."""

    def __init__(self, enabled, n_runs, stream=None):
        self.enabled = enabled
        self.n_runs = n_runs
        self.stream = stream if stream is not None else sys.stderr
        self.tqdm = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self.tqdm = tqdm
            except ImportError:
                print("(plain progress lines; for progress bars: pip install \"fusedoptim[demo]\")",
                      file=self.stream)
        self.bar = None

    def start(self, index, name, epochs):
        self.index, self.name, self.epochs = index, name, epochs
        if self.tqdm is not None:
            self.bar = self.tqdm(total=epochs, desc=f"[{index}/{self.n_runs}] {name:<9}", unit="ep",
                                 leave=True, file=self.stream, dynamic_ncols=True)

    def update(self, epoch, loss, acc):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}  val acc {acc:6.1%}", refresh=False)
            self.bar.update(1)
            return
        every = max(1, self.epochs // 4)
        if epoch == self.epochs or epoch % every == 0:
            print(f"[{self.index}/{self.n_runs}] {self.name:<9} epoch {epoch:>3}/{self.epochs}  "
                  f"loss {loss:.4f}  val acc {acc:6.1%}", file=self.stream, flush=True)

    def finish(self, note=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if note and self.enabled:
            print(f"[{self.index}/{self.n_runs}] {self.name:<9} {note}", file=self.stream,
                  flush=True)


# ------------------------------------------------------------------------------ data-parallel
class _DataParallel:
    """compare --distributed: this rank's slice of each mini-batch, its grads weighted so that
    their mean over the ranks is the whole batch's mean gradient."""

    def __init__(self, cfg):
        from mpi4py import MPI

        from ..distributed import ZeroRedundancyOptimizer, allreduce_
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.stage = cfg.zero
        self._zero, self.allreduce_ = ZeroRedundancyOptimizer, allreduce_

    def zero(self, params, cls, **kwargs):
        return self._zero(params, cls, stage=self.stage, **kwargs)

    def loss_and_grad(self, model, params, data, idx):
        mine = np.array_split(idx, self.size)[self.rank]
        if len(mine):
            loss, grads = model.loss_and_grad(params, data.X_train[mine], data.Y_train[mine])
            w = len(mine) * self.size / len(idx)
            if w != 1.0:
                for g in grads.values():
                    g *= g.dtype.type(w)
        else:                   # a last batch smaller than the number of ranks
            loss, grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
        # The batch's mean loss on every rank, so that all of them stop together.
        loss = self.comm.allreduce(loss * len(mine)) / len(idx)
        return loss, grads


def zero_supported(name):
    """Whether ZeroRedundancyOptimizer shards this compare optimizer's class."""
    from ..distributed.zero import shardable
    return shardable(optimizer_class(name))


# --------------------------------------------------------------------------------- training
def _copy(params):
    return {k: v.copy() for k, v in params.items()}


def _allclose_ratio(a, b):
    """Largest |a-b| / (atol + rtol*|b|) over all arrays: <= 1 means np.allclose agrees."""
    worst = 0.0
    for k in a:
        ref = b[k].astype(np.float64)
        err = np.abs(a[k].astype(np.float64) - ref) / (REF_ATOL + REF_RTOL * np.abs(ref))
        if not np.all(np.isfinite(err)):
            return math.inf
        worst = max(worst, float(err.max(initial=0.0)))
    return worst


def _max_abs_diff(a, b):
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max(initial=0.0))
               for k in a)


def precision_kwargs(cfg):
    """The precision keywords every optimizer of the run gets; none when no flag was given, so
    a run without the flags builds exactly the optimizers it always did."""
    kwargs = {}
    if cfg.precision is not None and PRECISIONS[cfg.precision] != np.float32:
        kwargs["master_weights"] = True  # the library's default for half params, made explicit
    if cfg.state_dtype is not None:
        kwargs["state_dtype"] = cfg.state_dtype
    if cfg.min_quantized_size is not None:
        kwargs["min_quantized_size"] = cfg.min_quantized_size
    return kwargs


def param_dtype(cfg):
    """The dtype of the params (and of the grads the optimizer receives)."""
    return PRECISIONS[cfg.precision] if cfg.precision is not None else np.dtype(cfg.dtype)


def state_nbytes(opt):
    """Bytes of optimizer state per slot name, summed over params: every ndarray in
    ``opt.state`` (moments, ``master_param``, int8/int4 codes and ``<slot>_absmax``). The step
    count is a scalar, not a buffer, and is not counted."""
    by_slot = {}
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, np.ndarray) and k != "step":
                by_slot[k] = by_slot.get(k, 0) + int(v.nbytes)
    return by_slot


def state_label(cfg):
    """What the state is stored in: the --state-dtype, or what the library picks without it."""
    if cfg.state_dtype is not None:
        return cfg.state_dtype
    pdt = param_dtype(cfg)
    return "float32" if pdt in (PRECISIONS["bf16"], PRECISIONS["fp16"]) else str(pdt)


def train_one(name, cfg, model, init_params, data, progress, index):
    """Train one optimizer from ``init_params``; return the record that goes into the JSON."""
    spec = OPTIMIZERS[name]
    lr = cfg.lr_per.get(name, cfg.lr if cfg.lr is not None else spec.lr)
    n = len(data.X_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)

    params = _copy(init_params)
    prec = precision_kwargs(cfg)
    dp = _DataParallel(cfg) if cfg.distributed else None
    if dp is not None and cfg.zero:
        opt = dp.zero(params, optimizer_class(name), lr=lr, **spec.kwargs, **prec)
    else:
        opt = optimizer_class(name)(params, lr=lr, **spec.kwargs, **prec)
    schedule_name = spec.schedule or cfg.schedule
    schedule = Schedule(schedule_name, opt, cfg.epochs, steps_per_epoch)
    ref = None
    if cfg.reference:
        ref_params = _copy(init_params)
        ref_opt = optimizer_class(name, reference=True)(ref_params, lr=lr, **spec.kwargs,
                                                        **prec)
        ref = {"params": ref_params, "opt": ref_opt, "step_s": 0.0, "max_abs_diff": [],
               "allclose_ratio": [], "train_loss": []}

    # The averaged weights (--ema): fusedoptim.swa_utils, updated after every step.
    ema = AveragedParams(params, decay=cfg.ema) if cfg.ema is not None else None
    ema_s = 0.0

    # One generator per run with the same seed: every optimizer sees identical batches.
    rng = np.random.default_rng(cfg.seed + 1)
    hist = {"epoch": [0], "train_loss": [], "val_loss": [], "val_acc": [],
            "lr": [opt.param_groups[0]["lr"]]}
    if ema is not None:
        hist["ema_val_acc"] = []

    # Schedule-Free trains at the y sequence and is evaluated at x: ``eval()`` swaps the params
    # to x (one fused pass) for the measurement and ``train()`` swaps them back.
    swaps = [o for o in (opt, ref and ref["opt"]) if hasattr(o, "eval")]

    def record():
        for o in swaps:
            o.eval()
        try:
            return _measure()
        finally:
            for o in swaps:
                o.train()

    def _measure():
        tl, _ = model.evaluate(params, data.X_train, data.Y_train, data.y_train)
        vl, va = model.evaluate(params, data.X_val, data.Y_val, data.y_val)
        hist["train_loss"].append(tl)
        hist["val_loss"].append(vl)
        hist["val_acc"].append(va)
        if ema is not None:
            hist["ema_val_acc"].append(
                model.evaluate(ema.params, data.X_val, data.Y_val, data.y_val)[1])
        if ref is not None:
            ref["max_abs_diff"].append(_max_abs_diff(params, ref["params"]))
            ref["allclose_ratio"].append(_allclose_ratio(params, ref["params"]))
            ref["train_loss"].append(
                model.evaluate(ref["params"], data.X_train, data.Y_train, data.y_train)[0])
        return tl, va

    progress.start(index, name, cfg.epochs)
    status = "ok"
    step_s = 0.0
    t = 0
    t_run = time.perf_counter()
    with np.errstate(all="ignore"):  # a diverging run is reported as such, not as warnings
        record()
        for epoch in range(1, cfg.epochs + 1):
            order = rng.permutation(n)
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                if dp is not None:
                    loss, grads = dp.loss_and_grad(model, params, data, idx)
                else:
                    loss, grads = model.loss_and_grad(params, data.X_train[idx],
                                                      data.Y_train[idx])
                if not math.isfinite(loss):  # never hand NaN/inf gradients to the optimizer
                    status = "diverged"
                    break
                last_lr = opt.param_groups[0]["lr"]
                t0 = time.perf_counter()
                if dp is not None and not cfg.zero:
                    dp.allreduce_(grads)        # the mean over the ranks, timed with the step
                opt.step(grads)
                step_s += time.perf_counter() - t0
                if ema is not None:
                    t0 = time.perf_counter()
                    ema.update_parameters(params)
                    ema_s += time.perf_counter() - t0
                if ref is not None:
                    # The reference follows the fused optimizer's learning rates exactly.
                    for g_ref, g in zip(ref["opt"].param_groups, opt.param_groups):
                        g_ref["lr"] = g["lr"]
                    t0 = time.perf_counter()
                    ref["opt"].step(grads)
                    ref["step_s"] += time.perf_counter() - t0
                t += 1
                schedule.after_step(t)
            hist["epoch"].append(epoch)
            hist["lr"].append(last_lr)  # the rate the epoch's last step used
            tl, va = record()
            if status == "diverged" or not math.isfinite(tl):
                status = "diverged"
                break
            progress.update(epoch, tl, va)
    wall_s = time.perf_counter() - t_run
    if ref is not None:
        wall_s -= ref["step_s"]  # the reference's own steps are not part of this run's cost
    progress.finish(f"diverged at epoch {hist['epoch'][-1]}" if status == "diverged" else None)
    state_by_slot = state_nbytes(opt)
    per_rank = None
    if dp is not None and cfg.zero:
        # Sharded: every rank holds a part; the column shows the whole (comparable with one
        # process), the JSON each rank's part.
        per_rank = dp.comm.allgather(sum(state_by_slot.values()))
        parts = dp.comm.allgather(state_by_slot)
        state_by_slot = {k: sum(p.get(k, 0) for p in parts)
                         for k in dict.fromkeys(k for p in parts for k in p)}
    state_bytes = sum(state_by_slot.values())

    rec = {
        "class": f"fusedoptim.{spec.cls}",
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs.items()},
        "lr": lr,
        "schedule": schedule_name,
        "status": status,
        "epochs_run": hist["epoch"][-1],
        "steps": t,
        "initial_train_loss": hist["train_loss"][0],
        "final_train_loss": hist["train_loss"][-1],
        "final_val_loss": hist["val_loss"][-1],
        "final_val_acc": hist["val_acc"][-1],
        "wall_s": wall_s,
        "step_s": step_s,
        "step_us": 1e6 * step_s / max(t, 1),
        "state_dtype": state_label(cfg),
        "state_bytes": state_bytes,
        "state_mb": state_bytes / MB,
        "state_bytes_by_slot": state_by_slot,
        "history": hist,
    }
    if per_rank is not None:
        rec["state_bytes_per_rank"] = per_rank
    if ema is not None:
        rec["ema"] = {"decay": cfg.ema, "final_val_acc": hist["ema_val_acc"][-1],
                      "update_s": ema_s, "update_us": 1e6 * ema_s / max(t, 1)}
    if ref is not None:
        ratio = max(ref["allclose_ratio"])
        rec["reference"] = {
            "class": f"fusedoptim.reference.{spec.cls}",
            "step_s": ref["step_s"],
            "step_us": 1e6 * ref["step_s"] / max(t, 1),
            "speedup": ref["step_s"] / step_s if step_s > 0 else math.inf,
            "max_abs_diff": max(ref["max_abs_diff"]),
            "allclose_ratio": ratio,
            "agree": bool(ratio <= 1.0),
            "history": {"max_abs_diff": ref["max_abs_diff"],
                        "allclose_ratio": ref["allclose_ratio"],
                        "train_loss": ref["train_loss"]},
        }
    return rec


def _check_distributed(cfg):
    """--distributed/--zero: checked before anything runs; returns rank and size."""
    if cfg.zero not in (0, 1, 2):
        raise DemoError(f"--zero takes 1 or 2, got {cfg.zero}")
    if not cfg.distributed:
        if cfg.zero:
            raise DemoError("--zero needs --distributed (and mpirun -n N)")
        return {"rank": 0, "size": 1}
    if cfg.reference:
        raise DemoError("--reference does not run with --distributed; drop one of them")
    if cfg.precision in ("bf16", "fp16"):
        raise DemoError(f"--precision {cfg.precision} does not run with --distributed: MPI "
                        f"sums float32/float64 grads only")
    try:
        from mpi4py import MPI
    except ImportError:
        raise DemoError('--distributed needs mpi4py: pip install "fusedoptim[mpi]", then '
                        'mpirun -n 2 fusedoptim compare --distributed') from None
    return {"rank": MPI.COMM_WORLD.Get_rank(), "size": MPI.COMM_WORLD.Get_size()}


def resolve_optimizers(cfg):
    """Split the requested names into (runnable, skipped); a named-but-missing one is an error."""
    runnable, skipped = [], []
    for name in cfg.optimizers:
        try:
            optimizer_class(name)
            if cfg.reference:
                optimizer_class(name, reference=True)
        except DemoError:
            if cfg.explicit:
                raise
            skipped.append(name)
            continue
        runnable.append(name)
    if not runnable:
        raise DemoError(f"none of the requested optimizers is available in this build "
                        f"(missing: {', '.join(skipped)})")
    return runnable, skipped


def _flags(cfg):
    """The precision flags of the run, as typed (for messages)."""
    parts = []
    if cfg.precision is not None:
        parts.append(f"--precision {cfg.precision}")
    if cfg.state_dtype is not None:
        parts.append(f"--state-dtype {cfg.state_dtype}")
    return " ".join(parts) or "these settings"


def resolve_precision(cfg, runnable):
    """Split ``runnable`` into (supported, unsupported: name -> the library's reason).

    Each optimizer is built once on a small param of the run's dtype with the run's precision
    keywords: the constructor is where fusedoptim checks them, and a refusal is a ValueError
    naming the optimizer and what it supports. With no precision flag nothing is checked.
    An optimizer the user named that refuses is an error before any training; with the default
    "all" it is skipped, and the caller prints a note naming it.
    """
    prec = precision_kwargs(cfg)
    if not prec:
        return list(runnable), {}
    probe_dtype = param_dtype(cfg)
    supported, unsupported = [], {}
    for name in runnable:
        spec = OPTIMIZERS[name]
        try:
            for ref in ([False, True] if cfg.reference else [False]):
                probe = {"w": np.zeros(8, probe_dtype)}
                optimizer_class(name, reference=ref)(probe, lr=1e-3, **spec.kwargs, **prec)
        except (ValueError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if cfg.explicit:
                raise DemoError(f"{_flags(cfg)}: optimizer {name} does not support it: "
                                f"{reason}") from None
            unsupported[name] = reason
            continue
        supported.append(name)
    if not supported:
        first = next(iter(unsupported.values()))
        raise DemoError(f"{_flags(cfg)}: none of the requested optimizers supports it "
                        f"({', '.join(unsupported)}; e.g. {first})")
    return supported, unsupported


def _check_precision(cfg):
    if cfg.precision is not None:
        if cfg.precision not in PRECISIONS:
            raise DemoError(f"unknown precision {cfg.precision!r}; choose from: "
                            f"{', '.join(PRECISIONS)}")
        if np.dtype(cfg.dtype) != np.float32:
            raise DemoError(f"--precision {cfg.precision} runs the model in float32; it cannot "
                            f"be combined with --dtype {cfg.dtype}")
    if cfg.state_dtype is not None and cfg.state_dtype not in STATE_DTYPES:
        raise DemoError(f"unknown state dtype {cfg.state_dtype!r}; choose from: "
                        f"{', '.join(STATE_DTYPES)}")
    if cfg.min_quantized_size is not None and cfg.min_quantized_size < 0:
        raise DemoError(f"--min-quantized-size must be a non-negative integer, got "
                        f"{cfg.min_quantized_size}")


def describe_precision(cfg, params):
    """One line: the params' dtype, master weights, the state dtype, what got quantized."""
    pdt = param_dtype(cfg)
    name = "bfloat16" if pdt == PRECISIONS["bf16"] else str(pdt)
    text = f"params and grads {name}"
    if "master_weights" in precision_kwargs(cfg):
        text += " (float32 master weights in the optimizer)"
    text += f", state {state_label(cfg)}"
    if cfg.state_dtype in QUANTIZED_STATE:
        from fusedoptim._precision import MIN_QUANTIZED_SIZE

        mqs = MIN_QUANTIZED_SIZE if cfg.min_quantized_size is None else cfg.min_quantized_size
        big = [p for p in params.values() if p.size >= mqs]
        text += (f" on {len(big)} of {len(params)} tensors ({sum(p.size for p in big)} of "
                 f"{sum(p.size for p in params.values())} params: tensors under "
                 f"{mqs} elements keep float32 state, --min-quantized-size)")
    return text


def _single_threaded_blas():
    """Limit BLAS to one thread while training, if threadpoolctl (from scikit-learn) is there.

    The MLP's matmuls are small: a multi-threaded BLAS spends more time waking threads than
    multiplying, and its threads compete with the fused kernels' OpenMP threads for the cores
    (measured on the 2-core machine: full-train-set evaluation 8-12 ms threaded, 0.7 ms on one).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_ema(cfg):
    if cfg.ema is None:
        return
    if not (isinstance(cfg.ema, (int, float)) and not isinstance(cfg.ema, bool)
            and 0.0 <= cfg.ema <= 1.0):
        raise DemoError(f"--ema must be a decay in [0, 1] (e.g. 0.99), got {cfg.ema!r}")
    if param_dtype(cfg) not in (np.float32, np.float64):
        raise DemoError(f"--ema averages float32/float64 weights; --precision {cfg.precision} "
                        f"gives {param_dtype(cfg)} params (use fp32, or drop --ema)")


def _check_writable(path, what):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DemoError(f"{what}: directory does not exist: {parent}")
    if os.path.isdir(path):
        raise DemoError(f"{what}: {path} is a directory")


def run_compare(cfg: CompareConfig, out=None, err=None):
    """Validate, train every optimizer, print the table; write the plot and JSON if asked.

    Returns the result dictionary (the JSON content). Raises :class:`DemoError` on bad input
    before any training starts.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if cfg.epochs <= 0:
        raise DemoError(f"--epochs must be a positive integer, got {cfg.epochs}")
    if cfg.batch_size <= 0:
        raise DemoError(f"--batch-size must be a positive integer, got {cfg.batch_size}")
    if cfg.schedule not in SCHEDULES:
        raise DemoError(f"unknown schedule {cfg.schedule!r}; choose from: {', '.join(SCHEDULES)}")
    _check_precision(cfg)
    _check_ema(cfg)
    dist_note = _check_distributed(cfg)
    if cfg.distributed and dist_note["rank"] != 0:
        # Every rank trains; rank 0 alone prints, and writes the plot and the JSON.
        out = err = open(os.devnull, "w")
        cfg = replace(cfg, plot=None, json=None, progress=False)
    # Fail before training, not after a minute of it, if an output cannot be produced.
    if cfg.plot:
        _check_writable(cfg.plot, "--plot")
    if cfg.json:
        _check_writable(cfg.json, "--json")
    needs = [PLOT_NEEDS] if cfg.plot else []
    if cfg.data_path is None and cfg.dataset == "digits":
        needs.append(DIGITS_NEEDS)
    require_all(needs)  # one message naming everything that is missing
    runnable, skipped = resolve_optimizers(cfg)
    runnable, unsupported = resolve_precision(cfg, runnable)
    if cfg.zero:
        unsharded = [n for n in runnable if not zero_supported(n)]
        if unsharded and cfg.explicit:
            raise DemoError(f"--zero {cfg.zero}: ZeroRedundancyOptimizer cannot shard "
                            f"{', '.join(unsharded)} (it needs whole tensors in a step); "
                            f"drop --zero to average their grads with allreduce_")
        runnable = [n for n in runnable if n not in unsharded]
        if unsharded:
            print(f"skipping (not sharded by --zero): {', '.join(unsharded)}", file=err)
    dtype = np.dtype(cfg.dtype)
    data = load_dataset(cfg.dataset, cfg.data_path, cfg.val_frac, cfg.seed, dtype)
    # Only now, with all input validated: a rejected run prints its one error line and nothing else.
    if skipped:
        print(f"skipping (not available in this build): {', '.join(skipped)}", file=err)
    if unsupported:
        print(f"skipping ({_flags(cfg)} not supported): {', '.join(unsupported)}", file=err)
    output = cfg.output or default_output(cfg.loss)
    model = MLP([data.n_features, *cfg.hidden, data.n_outputs], cfg.activation, output, cfg.loss,
                cfg.elu_alpha, dtype, param_dtype=param_dtype(cfg))
    init = model.init_params(cfg.seed)
    print(f"{data.describe()}; model {model} with {model.n_params()} parameters; "
          f"{cfg.epochs} epochs, batch {cfg.batch_size}, schedule {cfg.schedule}", file=out,
          flush=True)
    if precision_kwargs(cfg) or cfg.precision is not None:
        print(describe_precision(cfg, init), file=out, flush=True)
    if cfg.distributed:
        how = (f"ZeroRedundancyOptimizer stage {cfg.zero}" if cfg.zero
               else "allreduce_ of the grads")
        print(f"data-parallel over {dist_note['size']} MPI ranks: each takes its slice of "
              f"every mini-batch; {how} (the step time includes the communication)",
              file=out, flush=True)

    progress = _Progress(cfg.progress, len(runnable), err)
    runs = {}
    with _single_threaded_blas():
        for i, name in enumerate(runnable, 1):
            runs[name] = train_one(name, cfg, model, init, data, progress, i)

    result = {
        "command": "compare",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "dataset": {"name": data.name, "n_train": len(data.X_train), "n_val": len(data.X_val),
                    "n_features": data.n_features, "n_outputs": data.n_outputs},
        "model": {"sizes": model.sizes, "activation": model.activation, "output": model.output,
                  "loss": model.loss_name, "n_params": model.n_params(), "dtype": str(dtype),
                  "param_dtype": str(model.param_dtype)},
        "precision": {"params": str(model.param_dtype), "grads": str(model.param_dtype),
                      "master_weights": "master_weights" in precision_kwargs(cfg),
                      "state_dtype": state_label(cfg),
                      "optimizer_kwargs": precision_kwargs(cfg),
                      "state_bytes_counts": STATE_MB_NOTE.split(": ", 1)[1]},
        "skipped": skipped,
        "unsupported": unsupported,
        "optimizers": runs,
    }
    if cfg.distributed:
        result["distributed"] = {"ranks": dist_note["size"], "zero": cfg.zero,
                                 "state_bytes": "summed over the ranks; each rank's part in "
                                                "state_bytes_per_rank (under --zero)"}
    if cfg.reference:
        result["reference_tolerance"] = {
            "rtol": REF_RTOL, "atol": REF_ATOL,
            "rule": "|p_fused - p_ref| <= atol + rtol*|p_ref| at every epoch end"}
    print(format_table(result), file=out, flush=True)
    if cfg.json:
        try:
            with open(cfg.json, "w") as fh:
                json.dump(_jsonable(result), fh, indent=1)
        except OSError as exc:
            raise DemoError(f"cannot write --json {cfg.json}: {exc.strerror or exc}") from None
        print(f"wrote {cfg.json}", file=out)
    if cfg.plot:
        plot_compare(result, cfg.plot)
        print(f"wrote {cfg.plot}", file=out)
    return result


def _jsonable(obj):
    # JSON has no inf/nan; diverged runs and infinite speed-ups become null.
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


# --------------------------------------------------------------------------------- output
def format_table(result) -> str:
    """One row per optimizer; reference columns appear only when the reference ran."""
    runs = result["optimizers"]
    with_ref = any("reference" in r for r in runs.values())
    head = ["optimizer", "lr", "train loss", "val acc", "wall s", "step() s", "us/step",
            "state MB"]
    with_ema = any("ema" in r for r in runs.values())
    if with_ema:
        head[4:4] = ["EMA val acc"]
    if with_ref:
        head += ["ref us/step", "speed-up", "max |dp|", "agree"]
    rows = []
    for name, r in runs.items():
        loss = f"{r['final_train_loss']:.4f}" if math.isfinite(r["final_train_loss"]) else "nan"
        if r["status"] != "ok":
            loss += f" ({r['status']})"
        row = [name, f"{r['lr']:g}", loss, f"{r['final_val_acc']:.1%}", f"{r['wall_s']:.2f}",
               f"{r['step_s']:.3f}", f"{r['step_us']:.1f}", f"{r['state_mb']:.4f}"]
        if with_ema:
            row[4:4] = [f"{r['ema']['final_val_acc']:.1%}"]
        if with_ref:
            ref = r["reference"]
            row += [f"{ref['step_us']:.1f}", f"{ref['speedup']:.1f}x", f"{ref['max_abs_diff']:.1e}",
                    "yes" if ref["agree"] else "NO"]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    text = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    total_wall = sum(r["wall_s"] for r in runs.values())
    total_step = sum(r["step_s"] for r in runs.values())
    text.append(f"total: {total_wall:.2f} s of training, {total_step:.3f} s inside step()")
    text.append(STATE_MB_NOTE)
    own = {}
    for name, r in runs.items():
        if r["schedule"] != result["config"]["schedule"]:
            own.setdefault(r["schedule"], []).append(name)
    for schedule, names in own.items():
        text.append(f"schedule {schedule} for {', '.join(names)}: Schedule-Free replaces the "
                    f"learning-rate schedule (a linear warm-up is its own argument)")
    if with_ema:
        decay = next(r["ema"]["decay"] for r in runs.values() if "ema" in r)
        us = [r["ema"]["update_us"] for r in runs.values() if "ema" in r]
        text.append(f"EMA val acc: the validation accuracy of an exponential moving average of "
                    f"the weights (decay {decay:g}, fusedoptim.swa_utils.AveragedParams, "
                    f"updated after every step: {min(us):.1f}-{max(us):.1f} us per update)")
    if with_ref:
        tol = result["reference_tolerance"]
        text.append(f"agree: fused and reference parameters within rtol={tol['rtol']:g}, "
                    f"atol={tol['atol']:g} at every epoch (same gradients fed to both)")
    return "\n".join(text)


def _plot_precision(result):
    p = result.get("precision", {})
    if not p.get("optimizer_kwargs") and p.get("params") == result["model"]["dtype"]:
        return ""
    return f" (params {p['params']}, state {p['state_dtype']})"


def plot_compare(result, path):
    """Write a PNG: train loss and validation accuracy per epoch, and time per step()."""
    require(*PLOT_NEEDS)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs = result["optimizers"]
    fig = Figure(figsize=(15, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_time = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    for name, r in runs.items():
        color = OPTIMIZERS[name].color
        h = r["history"]
        ax_loss.plot(h["epoch"], h["train_loss"], color=color, label=name, lw=1.6)
        ax_acc.plot(h["epoch"], [100 * a for a in h["val_acc"]], color=color, label=name, lw=1.6)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="train loss (log scale)",
                title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy [%]", title="validation accuracy")
    accs = [100 * a for r in runs.values() for a in r["history"]["val_acc"][1:]]
    if accs:  # zoom on the interesting part instead of the first epoch's low accuracy
        lo = np.percentile(accs, 5)
        ax_acc.set_ylim(max(0.0, lo - 5), 100.5)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(loc="lower right", fontsize=8, ncol=2)

    names = list(runs)
    ypos = np.arange(len(names))
    fused = [runs[n]["step_us"] for n in names]
    if any("reference" in runs[n] for n in names):
        refs = [runs[n]["reference"]["step_us"] for n in names]
        ax_time.barh(ypos - 0.2, fused, height=0.4, color=[OPTIMIZERS[n].color for n in names],
                     label="fused")
        ax_time.barh(ypos + 0.2, refs, height=0.4, color="0.75",
                     label="NumPy reference (label: fused speed-up)")
        for y, n in zip(ypos, names):
            ax_time.annotate(f"{runs[n]['reference']['speedup']:.1f}x", (refs[y], y + 0.2),
                             xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax_time.set_xlim(0, 1.2 * max(max(refs), max(fused)))  # room for the labels
        # Below the axes, where it cannot cover a bar.
        ax_time.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=1)
    else:
        ax_time.barh(ypos, fused, color=[OPTIMIZERS[n].color for n in names])
    ax_time.set_yticks(ypos, names)
    ax_time.invert_yaxis()
    ax_time.set(xlabel="time per step() [\u00b5s]", title="optimizer step time")
    ax_time.grid(True, axis="x", alpha=0.3)

    d, m, c = result["dataset"], result["model"], result["config"]
    widths = "-".join(str(s) for s in m["sizes"])
    fig.suptitle(f"{d['name']} ({d['n_train']} train / {d['n_val']} val), MLP {widths} "
                 f"{m['activation']}/{m['output']}/{m['loss']} {m['dtype']}"
                 f"{_plot_precision(result)}, "
                 f"batch {c['batch_size']}, "
                 f"schedule {c['schedule']}: same initial weights and batches for every optimizer")
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise DemoError(f"cannot write --plot {path}: {exc.strerror or exc}") from None
