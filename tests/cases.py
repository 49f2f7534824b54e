"""One entry per optimizer configuration family, shared by every generic optimizer test.

A Case names the fused class, its NumPy reference twin, a sampler of random hyperparameters
that covers every option, the matching torch.optim class (None when torch has none), and
hyperparameter values that must be rejected. Adding an optimizer to the test-suite means
adding a Case here.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import fusedoptim as fo


@dataclass
class Case:
    name: str
    fused: type
    reference: type
    sample: Callable            # rng -> kwargs for the constructor
    torch_name: Optional[str] = None
    # kwargs -> torch kwargs, or None when this configuration has no torch equivalent
    to_torch: Callable = lambda kw: dict(kw)
    bad: list = field(default_factory=list)   # (kwargs, name that the message must contain)


def _loguniform(rng, lo, hi):
    return float(10 ** rng.uniform(lo, hi))


def _adam_sample(rng):
    return dict(lr=_loguniform(rng, -4, -1),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=_loguniform(rng, -10, -6),
                weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])),
                amsgrad=bool(rng.integers(2)), maximize=bool(rng.integers(2)),
                decoupled_weight_decay=bool(rng.integers(2)),
                bias_correction=bool(rng.integers(4) > 0))


def _adamw_sample(rng):
    kw = _adam_sample(rng)
    del kw["decoupled_weight_decay"]
    return kw


def _no_bias_correction_in_torch(kw):
    if not kw.get("bias_correction", True):
        return None
    return {k: v for k, v in kw.items() if k != "bias_correction"}


_ADAM_BAD = [
    (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"),
    (dict(betas=(1.0, 0.999)), "betas[0]"), (dict(betas=(0.9, -0.1)), "betas[1]"),
    (dict(betas=(0.9,)), "betas"), (dict(eps=0.0), "eps"), (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(amsgrad="yes"), "amsgrad"), (dict(lr="0.1"), "lr"),
]

CASES = [
    Case("Adam", fo.Adam, fo.reference.Adam, _adam_sample, "Adam",
         _no_bias_correction_in_torch, _ADAM_BAD),
    Case("AdamW", fo.AdamW, fo.reference.AdamW, _adamw_sample, "AdamW",
         _no_bias_correction_in_torch, _ADAM_BAD),
]
