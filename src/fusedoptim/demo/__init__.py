"""The package's main job: the lecture-notes experiment, run on the fused kernels.

Same model, same data, same training loop; only the optimizer changes (``fusedoptim compare``),
plus optimizer paths on 2-D test functions (``fusedoptim landscape``). Argument parsing lives in
:mod:`fusedoptim.demo.cli`.

This module holds what both commands share: the table that maps CLI optimizer names to the public
``fusedoptim`` classes, and the one error type the CLI turns into a one-line message.

matplotlib, scikit-learn and tqdm are an optional extra (``pip install "fusedoptim[demo]"``),
so they are imported lazily, only by the features that need them. NumPy alone runs
``fusedoptim compare --dataset spirals --no-plot``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

__all__ = [
    "DemoError",
    "OptimizerSpec",
    "OPTIMIZERS",
    "DEFAULT_OPTIMIZERS",
    "require",
    "require_all",
    "parse_optimizer_names",
    "parse_lr_overrides",
    "optimizer_class",
]

DEMO_EXTRA = 'pip install "fusedoptim[demo]"'

# Import name -> (pip requirement, as pinned by the ``demo`` extra in pyproject.toml).
_PIP_NAMES = {
    "matplotlib": "matplotlib>=3.7",
    "sklearn": "scikit-learn>=1.3",
    "tqdm": "tqdm>=4.60",
    "PIL": "pillow",  # installed by matplotlib
}


class DemoError(Exception):
    """Bad input or a missing dependency. The CLI prints it as one line and exits with status 2."""


def require(module: str, feature: str):
    """Import an optional dependency, or fail with a message that says exactly what to install."""
    return require_all([(module, feature)])[0]


def require_all(needs):
    """Import every ``(module, feature)`` pair; name all the missing ones in one message."""
    found, missing = [], []
    for module, feature in needs:
        try:
            found.append(importlib.import_module(module))
        except ImportError:
            missing.append((module, feature))
    if missing:
        pins = [_PIP_NAMES.get(module.split(".")[0], module) for module, _ in missing]
        parts = [f"{feature} needs {pin.split('>')[0]}" for (_, feature), pin in zip(missing, pins)]
        quoted = " ".join(f'"{pin}"' for pin in pins)
        raise DemoError(f"{'; '.join(parts)}: run {DEMO_EXTRA} (or pip install {quoted})")
    return found


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the optimizer table: a CLI name bound to a public fusedoptim class.

    ``lr`` is the default learning rate for the MLP in ``compare``; ``landscape`` keeps its own
    per-function learning rates because a good step size depends on the function's curvature.
    """

    cls: str
    kwargs: dict = field(default_factory=dict)
    lr: float = 1e-3
    color: str = "black"
    # In the default set (the lecture notes' optimizers); the rest run with ``--optimizers all``
    # or when named.
    default: bool = True
    # A schedule this optimizer always runs under, whatever ``--schedule`` says: Schedule-Free
    # replaces the schedule ("none"; its own warm-up is an argument).
    schedule: str | None = None


# CLI name -> class and arguments. Arguments use torch.optim names and semantics. Learning rates
# were picked from a sweep on the digits MLP (20 epochs, batch 64, cosine schedule) so that every
# optimizer reaches a sensible result; they are starting points, not a benchmark of optimizers.
# The sweep first ran on torch.optim's implementations of the same rules; the fused classes follow
# the same trajectories (tests/test_optimizers.py), and re-running it on them changed only RAdam
# (0.002 -> 0.01: its first steps are un-adapted, so 0.002 left it far behind after 20 epochs).
# Colours are fixed per optimizer so the same optimizer looks the same in every picture.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("SGD", {}, lr=0.1, color="#1f77b4"),
    "momentum": OptimizerSpec("SGD", {"momentum": 0.9}, lr=0.02, color="#17becf"),
    "nesterov": OptimizerSpec("SGD", {"momentum": 0.9, "nesterov": True}, lr=0.02, color="#393b79"),
    "adagrad": OptimizerSpec("Adagrad", {}, lr=0.05, color="#2ca02c"),
    "rmsprop": OptimizerSpec("RMSprop", {}, lr=1e-3, color="#8c6d31"),
    "adadelta": OptimizerSpec("Adadelta", {}, lr=1.0, color="#bcbd22"),
    "adam": OptimizerSpec("Adam", {}, lr=2e-3, color="#d62728"),
    "adamw": OptimizerSpec("AdamW", {"weight_decay": 1e-2}, lr=2e-3, color="#ff7f0e"),
    "amsgrad": OptimizerSpec("Adam", {"amsgrad": True}, lr=2e-3, color="#8c564b"),
    "adamax": OptimizerSpec("Adamax", {}, lr=1e-2, color="#e377c2"),
    "nadam": OptimizerSpec("NAdam", {}, lr=2e-3, color="#9467bd"),
    "radam": OptimizerSpec("RAdam", {}, lr=1e-2, color="#7b4173"),
    "lion": OptimizerSpec("Lion", {"betas": (0.9, 0.99)}, lr=1e-3, color="#111111"),
    # Beyond torch.optim (issue 13): run with --optimizers all, or by name. Learning rates from
    # the same kind of sweep (digits, 20 epochs, batch 64, cosine; 3e-4..1 in steps of ~3x: the
    # best validation accuracy, the official default where it ties). Schedule-Free replaces
    # the schedule: it runs without one, with a warm-up of 20 steps (about 4% of the run).
    "schedulefree-adamw": OptimizerSpec("ScheduleFreeAdamW", {"warmup_steps": 20}, lr=0.01,
                                        color="#e6550d", default=False, schedule="none"),
    "schedulefree-sgd": OptimizerSpec("ScheduleFreeSGD", {"warmup_steps": 20}, lr=1.0,
                                      color="#31a354", default=False, schedule="none"),
    "ademamix": OptimizerSpec("AdEMAMix", {}, lr=0.01, color="#de2d26", default=False),
    "adopt": OptimizerSpec("ADOPT", {}, lr=0.01, color="#756bb1", default=False),
    "adan": OptimizerSpec("Adan", {}, lr=0.01, color="#636363", default=False),
    "adabelief": OptimizerSpec("AdaBelief", {}, lr=0.1, color="#fd8d3c", default=False),
    "yogi": OptimizerSpec("Yogi", {}, lr=1e-2, color="#3182bd", default=False),
    "prodigy": OptimizerSpec("Prodigy", {}, lr=1.0, color="#a1d99b", default=False),
    "madgrad": OptimizerSpec("MADGRAD", {}, lr=1e-2, color="#9e9ac8", default=False),
}


#: The default set of ``compare`` and ``landscape``: the lecture notes' optimizers.
DEFAULT_OPTIMIZERS = [name for name, spec in OPTIMIZERS.items() if spec.default]


def parse_optimizer_names(text: str | None) -> tuple[list[str], bool]:
    """Parse ``sgd,adam`` (or ``all``, or None for the default set) into table names, in the
    order given.

    Returns ``(names, explicit)``; ``explicit`` is False for "all" and the default set, in which
    case the caller skips optimizers missing from this build instead of failing.
    """
    if text is None:
        return DEFAULT_OPTIMIZERS[:], False
    if text.strip().lower() == "all":
        return list(OPTIMIZERS), False
    names = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in OPTIMIZERS:
            raise DemoError(
                f"unknown optimizer {raw.strip()!r}; choose from: {', '.join(OPTIMIZERS)} (or all)"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise DemoError("--optimizers is empty; give a comma-separated list such as adam,sgd")
    return names, True


def parse_lr_overrides(text: str | None) -> tuple[float | None, dict[str, float]]:
    """Parse ``--lr``: either one number for every optimizer or ``adam=0.01,sgd=0.1``.

    Returns ``(global_lr, per_name)``; a per-name entry wins over the global one.
    """
    if text is None:
        return None, {}
    global_lr, per_name = None, {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        name = name.strip().lower()
        try:
            lr = float(value)
        except ValueError:
            lr = float("nan")
        if not (math.isfinite(lr) and lr > 0):
            raise DemoError(f"--lr: learning rate must be a positive number, got {value.strip()!r}")
        if not sep:
            global_lr = lr
        elif name not in OPTIMIZERS:
            raise DemoError(f"--lr: unknown optimizer {name!r}; "
                            f"choose from: {', '.join(OPTIMIZERS)}")
        else:
            per_name[name] = lr
    return global_lr, per_name


def optimizer_class(name: str, reference: bool = False):
    """Return ``fusedoptim.<Class>`` (or ``fusedoptim.reference.<Class>``) for a table name.

    There is deliberately no fallback: an optimizer the build lacks is reported, never faked.
    """
    spec = OPTIMIZERS[name]
    import fusedoptim as fo

    where = "fusedoptim"
    module = fo
    if reference:
        where = "fusedoptim.reference"
        try:
            module = importlib.import_module("fusedoptim.reference")
        except ImportError:
            module = None
    cls = getattr(module, spec.cls, None) if module is not None else None
    if cls is None:
        kind = "reference optimizer" if reference else "optimizer"
        raise DemoError(f"{kind} {name} ({where}.{spec.cls}) is not available in this build")
    return cls
