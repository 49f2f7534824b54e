"""One entry per optimizer configuration family, shared by every generic optimizer test.

A Case names the fused class, its NumPy reference twin, a sampler of random hyperparameters
that covers every option, the matching torch.optim class (None when torch has none), and
hyperparameter values that must be rejected. Adding an optimizer to the test-suite means
adding a Case here.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import fusedoptim as fo


@dataclass(repr=False)
class Case:
    name: str
    fused: type
    reference: type
    sample: Callable            # rng -> kwargs for the constructor
    torch_name: Optional[str] = None
    # kwargs -> torch kwargs, or None when this configuration has no torch equivalent
    to_torch: Callable = lambda kw: dict(kw)
    bad: list = field(default_factory=list)   # (kwargs, name that the message must contain)
    # The step uses per-tensor norms, which the kernel sums in double in another order than
    # the NumPy reference: float64 results then differ by rounding relative to the tensor's
    # scale, not to each element (an element near zero after cancellation differs by more).
    tensor_norms: bool = False
    # Whether a group whose params tile one buffer (a FlatParams) steps as one flat tensor;
    # per-tensor norms (trust ratios) keep it stepping per param, on the same flat buffers.
    flat_steps: bool = True
    # The optimizer takes only matrices (Muon), not the generic battery's shapes.
    matrices_only: bool = False
    # Every group has the same lr (or 0): Prodigy's groups share one step size.
    one_lr: bool = False
    # Part of the step is a BLAS product (Muon's iteration), summed in another order than the
    # twin's: params agree at a stated tolerance, not bitwise (state buffers stay bitwise).
    blas_step: bool = False

    def __repr__(self):                 # what a failing example prints (hypothesis, pytest)
        return f"Case({self.name!r})"

    def _repr_pretty_(self, printer, cycle):     # hypothesis's and IPython's pretty printer
        printer.text(repr(self))


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


# -- Adamax, NAdam, RAdam, Lion, Rprop, ASGD ----------------------------------------------------

def _flag(rng):
    return bool(rng.integers(2))


def _maybe(rng, value):
    """0.0 or value, half the time each: exercises both sides of every `!= 0` branch."""
    return float(value) if rng.integers(2) else 0.0


def _adamax_sample(rng):
    return dict(lr=_loguniform(rng, -4, -1),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=_loguniform(rng, -10, -6), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                maximize=_flag(rng))


def _nadam_sample(rng):
    kw = _adamax_sample(rng)
    kw.update(momentum_decay=_maybe(rng, _loguniform(rng, -4, -1)),
              decoupled_weight_decay=_flag(rng))
    return kw


def _radam_sample(rng):
    kw = _adamax_sample(rng)
    # beta2 < 0.6 keeps rho_inf <= 5: never rectified. Otherwise both branches occur.
    beta2 = float(rng.uniform(0.9, 0.9999) if rng.integers(4) else rng.uniform(0.0, 0.6))
    kw.update(betas=(kw["betas"][0], beta2), decoupled_weight_decay=_flag(rng))
    return kw


def _lion_sample(rng):
    return dict(lr=_loguniform(rng, -5, -2),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.999))),
                weight_decay=_maybe(rng, rng.uniform(0, 1.0)), maximize=_flag(rng))


def _rprop_sample(rng):
    return dict(lr=_loguniform(rng, -4, -1),
                etas=(float(rng.uniform(0.1, 0.9)), float(rng.uniform(1.05, 2.0))),
                step_sizes=(_maybe(rng, _loguniform(rng, -7, -4)), _loguniform(rng, -3, 1)),
                maximize=_flag(rng))


def _asgd_sample(rng):
    # t0 below the run length exercises the averaging branch (mu != 1) after t0 + 1 steps.
    return dict(lr=_loguniform(rng, -3, -1), lambd=_maybe(rng, _loguniform(rng, -5, -1)),
                alpha=float(rng.uniform(0.0, 1.0)),
                t0=float(rng.uniform(0, 60)) if rng.integers(4) else 1e6,
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)), maximize=_flag(rng))


_NAN, _INF = float("nan"), float("inf")
_LR_BAD = [(dict(lr=-1.0), "lr"), (dict(lr=_NAN), "lr"), (dict(lr=_INF), "lr"),
           (dict(lr="0.1"), "lr")]
_BETAS_BAD = [(dict(betas=(1.0, 0.999)), "betas[0]"), (dict(betas=(0.9, -0.1)), "betas[1]"),
              (dict(betas=(0.9,)), "betas"), (dict(betas=(0.9, _NAN)), "betas[1]")]
_WD_BAD = [(dict(weight_decay=-0.1), "weight_decay"), (dict(weight_decay=_NAN), "weight_decay")]
_MAXIMIZE_BAD = [(dict(maximize="yes"), "maximize")]
_EPS_BAD = [(dict(eps=0.0), "eps"), (dict(eps=-1e-8), "eps")]
_DECOUPLED_BAD = [(dict(decoupled_weight_decay=2), "decoupled_weight_decay")]

_ADAMAX_BAD = _LR_BAD + _BETAS_BAD + _EPS_BAD + _WD_BAD + _MAXIMIZE_BAD
_NADAM_BAD = _ADAMAX_BAD + _DECOUPLED_BAD + [
    (dict(momentum_decay=-4e-3), "momentum_decay"), (dict(momentum_decay=_INF), "momentum_decay")]
_RADAM_BAD = _ADAMAX_BAD + _DECOUPLED_BAD
_LION_BAD = _LR_BAD + _BETAS_BAD + _WD_BAD + _MAXIMIZE_BAD
_RPROP_BAD = _LR_BAD + _MAXIMIZE_BAD + [
    (dict(etas=(0.0, 1.2)), "etas[0]"), (dict(etas=(1.0, 1.2)), "etas[0]"),
    (dict(etas=(0.5, 1.0)), "etas[1]"), (dict(etas=(0.5, _INF)), "etas[1]"),
    (dict(etas=(0.5,)), "etas"), (dict(step_sizes=(-1e-6, 50)), "step_sizes[0]"),
    (dict(step_sizes=(1e-6, _NAN)), "step_sizes[1]"), (dict(step_sizes=(1.0, 0.5)), "step_sizes"),
    (dict(step_sizes=None), "step_sizes")]
_ASGD_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(lambd=-1e-4), "lambd"), (dict(lambd=_NAN), "lambd"), (dict(alpha=-0.75), "alpha"),
    (dict(alpha=_INF), "alpha"), (dict(t0=-1.0), "t0"), (dict(t0=_NAN), "t0")]

CASES += [
    Case("Adamax", fo.Adamax, fo.reference.Adamax, _adamax_sample, "Adamax", bad=_ADAMAX_BAD),
    Case("NAdam", fo.NAdam, fo.reference.NAdam, _nadam_sample, "NAdam", bad=_NADAM_BAD),
    Case("RAdam", fo.RAdam, fo.reference.RAdam, _radam_sample, "RAdam", bad=_RADAM_BAD),
    Case("Lion", fo.Lion, fo.reference.Lion, _lion_sample, None, bad=_LION_BAD),
    Case("Rprop", fo.Rprop, fo.reference.Rprop, _rprop_sample, "Rprop", bad=_RPROP_BAD),
    Case("ASGD", fo.ASGD, fo.reference.ASGD, _asgd_sample, "ASGD", bad=_ASGD_BAD),
]


# -- SGD, Adagrad, RMSprop, Adadelta ------------------------------------------------------

def _sgd_sample(rng):
    style = "ema" if rng.random() < 0.25 else "torch"
    momentum = _maybe(rng, rng.uniform(0.5, 0.99))
    nesterov = momentum > 0 and _flag(rng)
    dampening = 0.0 if nesterov or style == "ema" else _maybe(rng, rng.uniform(0.0, 0.5))
    return dict(lr=_loguniform(rng, -4, -1), momentum=momentum, dampening=dampening,
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)), nesterov=nesterov,
                maximize=_flag(rng), momentum_style=style)


def _sgd_to_torch(kw):
    kw = dict(kw)
    if kw.pop("momentum_style") == "ema":
        kw["lr"] *= 1.0 - kw["momentum"]    # the EMA form is torch's with lr * (1 - beta)
    return kw


_SGD_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(momentum=-0.1), "momentum"), (dict(momentum=_INF), "momentum"),
    (dict(dampening=1.5), "dampening"), (dict(dampening=-0.1), "dampening"),
    (dict(nesterov=True), "nesterov"),                       # needs momentum > 0
    (dict(momentum=0.9, dampening=0.1, nesterov=True), "dampening"),
    (dict(nesterov="yes"), "nesterov"),
    (dict(momentum_style="polyak"), "momentum_style"),
    (dict(momentum=1.0, momentum_style="ema"), "momentum"),  # an EMA weight is < 1
    (dict(momentum=0.9, dampening=0.5, momentum_style="ema"), "dampening"),
]

def _adagrad_sample(rng):
    return dict(lr=_loguniform(rng, -3, -0.5), lr_decay=_maybe(rng, _loguniform(rng, -4, -1)),
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                initial_accumulator_value=_maybe(rng, rng.uniform(0, 1)),
                eps=_loguniform(rng, -10, -6), maximize=_flag(rng))


_ADAGRAD_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + _EPS_BAD + [
    (dict(lr_decay=-0.1), "lr_decay"), (dict(lr_decay=_INF), "lr_decay"),
    (dict(initial_accumulator_value=-0.1), "initial_accumulator_value"),
    (dict(initial_accumulator_value=_NAN), "initial_accumulator_value"),
]

def _rmsprop_sample(rng):
    centered = _flag(rng)
    return dict(lr=_loguniform(rng, -4, -2), alpha=float(rng.uniform(0.5, 0.999)),
                eps=_loguniform(rng, -8, -5), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                momentum=_maybe(rng, rng.uniform(0.5, 0.95)), centered=centered,
                maximize=_flag(rng), bias_correction=not centered and bool(rng.integers(3) == 0))


def _rmsprop_to_torch(kw):
    if kw["bias_correction"]:
        return None                          # the notes' variant; torch has no equivalent
    return {k: v for k, v in kw.items() if k != "bias_correction"}


_RMSPROP_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + _EPS_BAD + [
    (dict(alpha=1.0), "alpha"), (dict(alpha=-0.1), "alpha"),
    (dict(momentum=-0.5), "momentum"), (dict(momentum=_NAN), "momentum"),
    (dict(centered="yes"), "centered"), (dict(bias_correction=2), "bias_correction"),
    (dict(centered=True, bias_correction=True), "bias_correction"),
]

def _adadelta_sample(rng):
    return dict(lr=_loguniform(rng, -1, 0.3), rho=float(rng.uniform(0.5, 0.99)),
                eps=_loguniform(rng, -8, -4), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                maximize=_flag(rng))


_ADADELTA_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + _EPS_BAD + [
    (dict(rho=1.5), "rho"), (dict(rho=-0.1), "rho"), (dict(eps=_NAN), "eps"),
]

CASES += [
    Case("SGD", fo.SGD, fo.reference.SGD, _sgd_sample, "SGD", _sgd_to_torch, _SGD_BAD),
    Case("Adagrad", fo.Adagrad, fo.reference.Adagrad, _adagrad_sample, "Adagrad",
         bad=_ADAGRAD_BAD),
    Case("RMSprop", fo.RMSprop, fo.reference.RMSprop, _rmsprop_sample, "RMSprop",
         _rmsprop_to_torch, _RMSPROP_BAD),
    Case("Adadelta", fo.Adadelta, fo.reference.Adadelta, _adadelta_sample, "Adadelta",
         bad=_ADADELTA_BAD),
]


# -- SignSGD / Signum (no torch class) -------------------------------------------------------

def _signsgd_sample(rng):
    momentum = _maybe(rng, rng.uniform(0.5, 0.99))
    dampening = 0.0 if momentum == 0 else float(rng.choice([0.0, momentum,
                                                             rng.uniform(0.0, 1.0)]))
    return dict(lr=_loguniform(rng, -4, -1), momentum=momentum, dampening=dampening,
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)), maximize=_flag(rng))


_SIGNSGD_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(momentum=-0.1), "momentum"), (dict(momentum=1.0), "momentum"),
    (dict(momentum=_NAN), "momentum"),
    (dict(dampening=1.5), "dampening"), (dict(dampening=-0.1), "dampening"),
]

CASES += [
    Case("SignSGD", fo.SignSGD, fo.reference.SignSGD, _signsgd_sample, None,
         bad=_SIGNSGD_BAD),
]


# -- LAMB, LARS ---------------------------------------------------------------------------------

def _lamb_sample(rng):
    # clamp_value: the default, no clamp, or one below typical norms so phi clamps.
    clamp = [10.0, float("inf"), float(rng.uniform(0.1, 2.0))][rng.integers(3)]
    return dict(lr=_loguniform(rng, -4, -1.5),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=_loguniform(rng, -8, -5), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                clamp_value=clamp, bias_correction=bool(rng.integers(4) > 0),
                maximize=_flag(rng))


def _lars_sample(rng):
    momentum = _maybe(rng, rng.uniform(0.5, 0.99))
    return dict(lr=_loguniform(rng, -1, 0.5), momentum=momentum,
                weight_decay=_maybe(rng, _loguniform(rng, -5, -3)),
                trust_coefficient=_loguniform(rng, -3.5, -1.5),
                eps=float(rng.choice([0.0, 1e-8])), nesterov=momentum > 0 and _flag(rng),
                maximize=_flag(rng))


_LAMB_BAD = _LR_BAD + _BETAS_BAD + _EPS_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(clamp_value=0.0), "clamp_value"), (dict(clamp_value=-1.0), "clamp_value"),
    (dict(clamp_value=_NAN), "clamp_value"), (dict(bias_correction=2), "bias_correction"),
]
_LARS_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(momentum=-0.1), "momentum"), (dict(momentum=_INF), "momentum"),
    (dict(trust_coefficient=0.0), "trust_coefficient"),
    (dict(trust_coefficient=_NAN), "trust_coefficient"), (dict(eps=-1e-8), "eps"),
    (dict(eps=_INF), "eps"), (dict(momentum=0.0, nesterov=True), "nesterov"),
    (dict(nesterov="yes"), "nesterov"),
]

CASES += [
    Case("LAMB", fo.LAMB, fo.reference.LAMB, _lamb_sample, None, bad=_LAMB_BAD,
         tensor_norms=True, flat_steps=False),
    Case("LARS", fo.LARS, fo.reference.LARS, _lars_sample, None, bad=_LARS_BAD,
         tensor_norms=True, flat_steps=False),
]


# -- Schedule-Free (issue 13) ---------------------------------------------------------------------

def _schedule_free_common(rng):
    return dict(lr=_loguniform(rng, -3, 0),
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                warmup_steps=int(rng.choice([0, rng.integers(1, 8)])),
                r=float(rng.choice([0.0, rng.uniform(0.0, 2.0)])),
                weight_lr_power=float(rng.choice([2.0, 0.0, rng.uniform(0.0, 3.0)])),
                maximize=_flag(rng))


def _sf_adamw_sample(rng):
    kw = _schedule_free_common(rng)
    kw["lr"] *= 0.01
    # beta1 below 2/3 makes eval()'s lerp weight 1 - 1/beta1 take torch's other branch
    return dict(kw, betas=(float(rng.uniform(0.3, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=_loguniform(rng, -10, -6))


def _sf_sgd_sample(rng):
    return dict(_schedule_free_common(rng), momentum=float(rng.uniform(0.3, 0.99)))


_SF_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(warmup_steps=-1), "warmup_steps"), (dict(warmup_steps=2.5), "warmup_steps"),
    (dict(warmup_steps=True), "warmup_steps"), (dict(r=_NAN), "r"), (dict(r=_INF), "r"),
    (dict(r="1"), "r"), (dict(weight_lr_power=-1.0), "weight_lr_power"),
    (dict(weight_lr_power=_INF), "weight_lr_power")]
_SF_ADAMW_BAD = _SF_BAD + _BETAS_BAD + _EPS_BAD + [(dict(betas=(0.0, 0.999)), "betas[0]")]
_SF_SGD_BAD = _SF_BAD + [(dict(momentum=0.0), "momentum"), (dict(momentum=1.0), "momentum"),
                         (dict(momentum=_NAN), "momentum")]

CASES += [
    Case("ScheduleFreeAdamW", fo.ScheduleFreeAdamW, fo.reference.ScheduleFreeAdamW,
         _sf_adamw_sample, None, bad=_SF_ADAMW_BAD),
    Case("ScheduleFreeSGD", fo.ScheduleFreeSGD, fo.reference.ScheduleFreeSGD, _sf_sgd_sample,
         None, bad=_SF_SGD_BAD),
]


# -- Issue 13: AdEMAMix, ADOPT (no torch class) ---------------------------------------------------

def _ademamix_sample(rng):
    beta1 = float(rng.uniform(0.05, 0.95))
    return dict(lr=_loguniform(rng, -4, -2),
                betas=(beta1, float(rng.uniform(0.9, 0.9999)), float(rng.uniform(beta1, 0.9999))),
                alpha=float(rng.choice([0.0, rng.uniform(0.5, 10.0)])),
                t_alpha=None if rng.integers(2) else int(rng.integers(1, 200)),
                t_beta3=None if rng.integers(2) else int(rng.integers(1, 200)),
                eps=_loguniform(rng, -10, -6), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                maximize=_flag(rng))


def _adopt_sample(rng):
    return dict(lr=_loguniform(rng, -4, -1.5),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.5, 0.9999))),
                eps=_loguniform(rng, -8, -4), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                decouple=_flag(rng), maximize=_flag(rng))


_ADEMAMIX_BAD = _LR_BAD + _EPS_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(betas=(1.0, 0.999, 0.9999)), "betas[0]"), (dict(betas=(0.9, -0.1, 0.9999)), "betas[1]"),
    (dict(betas=(0.9, 0.999, 1.0)), "betas[2]"), (dict(betas=(0.9, 0.999, _NAN)), "betas[2]"),
    (dict(betas=(0.9, 0.999)), "betas"), (dict(betas=0.9), "betas"),
    (dict(alpha=-1.0), "alpha"), (dict(alpha=_INF), "alpha"), (dict(alpha=None), "alpha"),
    (dict(t_alpha=0), "t_alpha"), (dict(t_alpha=2.5), "t_alpha"), (dict(t_alpha=True), "t_alpha"),
    (dict(t_beta3=-1), "t_beta3"), (dict(t_beta3="100"), "t_beta3"),
    # the beta3 warm-up takes log(beta1) and needs beta1 <= beta3
    (dict(t_beta3=100, betas=(0.0, 0.999, 0.9999)), "betas[0]"),
    (dict(t_beta3=100, betas=(0.99, 0.999, 0.9)), "betas[2]"),
]
_ADOPT_BAD = _LR_BAD + _BETAS_BAD + _EPS_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(eps=_NAN), "eps"), (dict(decouple="yes"), "decouple"), (dict(decouple=2), "decouple"),
]

CASES += [
    Case("AdEMAMix", fo.AdEMAMix, fo.reference.AdEMAMix, _ademamix_sample, None,
         bad=_ADEMAMIX_BAD),
    Case("ADOPT", fo.ADOPT, fo.reference.ADOPT, _adopt_sample, None, bad=_ADOPT_BAD),
]


# -- MADGRAD ------------------------------------------------------------------------------------

def _madgrad_sample(rng):
    # momentum 0 (no x0 buffer) a quarter of the time; eps 0 (rms = 0 read as inf) sometimes.
    momentum = float(rng.choice([0.0, rng.uniform(0.0, 0.99), 0.9, 0.9]))
    return dict(lr=_loguniform(rng, -4, -1), momentum=momentum,
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                eps=float(rng.choice([1e-6, 0.0, _loguniform(rng, -8, -4)])),
                decouple_decay=_flag(rng), maximize=_flag(rng))


_MADGRAD_BAD = _LR_BAD + _WD_BAD + _MAXIMIZE_BAD + [
    (dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"),
    (dict(momentum=_NAN), "momentum"), (dict(eps=-1e-8), "eps"), (dict(eps=_INF), "eps"),
    (dict(eps=_NAN), "eps"), (dict(decouple_decay="yes"), "decouple_decay"),
]

CASES += [
    Case("MADGRAD", fo.MADGRAD, fo.reference.MADGRAD, _madgrad_sample, None, bad=_MADGRAD_BAD),
]


# -- Yogi, Prodigy (issue 13) -------------------------------------------------------------------

def _yogi_sample(rng):
    return dict(lr=_loguniform(rng, -4, -1),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.9, 0.9999))),
                eps=float(rng.choice([1e-3, _loguniform(rng, -8, -2)])),
                initial_accumulator=float(rng.choice([1e-6, 0.0, _loguniform(rng, -4, -1)])),
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)))


_YOGI_BAD = _LR_BAD + _BETAS_BAD + _WD_BAD + [
    (dict(eps=-1e-3), "eps"), (dict(eps=_INF), "eps"), (dict(eps="1e-3"), "eps"),
    (dict(initial_accumulator=-1e-6), "initial_accumulator"),
    (dict(initial_accumulator=_NAN), "initial_accumulator")]

CASES += [
    Case("Yogi", fo.Yogi, fo.reference.Yogi, _yogi_sample, None, bad=_YOGI_BAD),
]


# -- Adan, AdaBelief (issue 13; no torch class) --------------------------------------------------

def _adan_sample(rng):
    return dict(lr=_loguniform(rng, -4, -1.5),
                betas=(float(rng.uniform(0.0, 0.99)), float(rng.uniform(0.0, 0.99)),
                       float(rng.uniform(0.9, 0.9999))),
                eps=_loguniform(rng, -10, -6), weight_decay=_maybe(rng, rng.uniform(0, 0.1)),
                no_prox=_flag(rng))


def _adabelief_sample(rng):
    # beta2 < 0.6 keeps N_max <= 5: never rectified; otherwise both sides of N_t >= 5 occur.
    beta2 = float(rng.uniform(0.9, 0.9999) if rng.integers(4) else rng.uniform(0.0, 0.6))
    return dict(lr=_loguniform(rng, -4, -1.5), betas=(float(rng.uniform(0.0, 0.99)), beta2),
                eps=float(rng.choice([1e-16, 1e-8, _loguniform(rng, -16, -6)])),
                weight_decay=_maybe(rng, rng.uniform(0, 0.1)), amsgrad=_flag(rng),
                weight_decouple=_flag(rng), fixed_decay=_flag(rng), rectify=_flag(rng),
                degenerated_to_sgd=_flag(rng))


_NONNEG_EPS_BAD = [(dict(eps=-1e-8), "eps"), (dict(eps=_NAN), "eps"), (dict(eps=_INF), "eps"),
                   (dict(eps="1e-8"), "eps")]
_ADAN_BAD = _LR_BAD + _WD_BAD + _NONNEG_EPS_BAD + [
    (dict(betas=(1.0, 0.92, 0.99)), "betas[0]"), (dict(betas=(0.98, -0.1, 0.99)), "betas[1]"),
    (dict(betas=(0.98, 0.92, _NAN)), "betas[2]"), (dict(betas=(0.9, 0.999)), "betas"),
    (dict(betas=0.9), "betas"), (dict(no_prox="yes"), "no_prox")]
_ADABELIEF_BAD = _LR_BAD + _BETAS_BAD + _WD_BAD + _NONNEG_EPS_BAD + [
    (dict(amsgrad="yes"), "amsgrad"), (dict(weight_decouple=2), "weight_decouple"),
    (dict(fixed_decay=None), "fixed_decay"), (dict(rectify="no"), "rectify"),
    (dict(degenerated_to_sgd=0.5), "degenerated_to_sgd")]

CASES += [
    Case("Adan", fo.Adan, fo.reference.Adan, _adan_sample, None, bad=_ADAN_BAD),
    Case("AdaBelief", fo.AdaBelief, fo.reference.AdaBelief, _adabelief_sample, None,
         bad=_ADABELIEF_BAD),
]


# -- Muon, Prodigy: their own batteries (test_spec.OWN_BATTERY), not in CASES --------------------
# The property suite (tests/property) draws these with the rest; the generic battery cannot.

def _muon_sample(rng):
    """Random hyperparameters covering every option: both lerp formulas of both lerps
    (momentum below and above 0.5), Nesterov or not, every adjust_lr_fn, 0 to 7 iterations,
    coefficients around Jordan's, weight decay on and off."""
    from fusedoptim.optim import muon as muon_mod
    momentum = float(rng.choice([rng.uniform(0.0, 0.5), rng.uniform(0.5, 0.99), 0.95]))
    a, b, c = muon_mod.NS_COEFFICIENTS
    coef = (a, b, c) if rng.integers(2) else (a * rng.uniform(0.9, 1.0),
                                              b * rng.uniform(0.9, 1.0), c * rng.uniform(0.9, 1.0))
    return dict(lr=float(10 ** rng.uniform(-3, -1.5)),
                weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.2)])),
                momentum=momentum, nesterov=bool(rng.integers(2)),
                ns_coefficients=tuple(float(x) for x in coef),
                eps=float(rng.choice([1e-7, 1e-3])), ns_steps=int(rng.integers(0, 8)),
                adjust_lr_fn=[None, "original", "match_rms_adamw"][int(rng.integers(3))])


def _prodigy_sample(rng):
    """Every option of the constructor, at random."""
    beta1 = float(rng.choice([0.0, rng.uniform(0.5, 0.95)]))
    return dict(lr=float(rng.choice([1.0, rng.uniform(0.3, 2.0)])),
                betas=(beta1, float(rng.uniform(0.9, 0.9999))),
                beta3=None if rng.integers(2) else float(rng.uniform(0.9, 0.999)),
                eps=float(rng.choice([1e-8, 10 ** rng.uniform(-8, -4)])),
                weight_decay=float(rng.choice([0.0, rng.uniform(0, 0.1)])),
                decouple=bool(rng.integers(2)),
                use_bias_correction=bool(rng.integers(2)),
                safeguard_warmup=bool(rng.integers(2)),
                d0=float(10 ** rng.uniform(-7, -5)),
                d_coef=float(rng.choice([1.0, rng.uniform(0.5, 2.0)])),
                growth_rate=float(rng.choice([math.inf, 1.02, rng.uniform(1.0, 1.5)])))


MUON_CASE = Case("Muon", fo.Muon, fo.reference.Muon, _muon_sample, "Muon",
                 matrices_only=True, blas_step=True)
PRODIGY_CASE = Case("Prodigy", fo.Prodigy, fo.reference.Prodigy, _prodigy_sample, None,
                    one_lr=True)
#: every registered optimizer (tests/property checks that these cover the registry)
ALL_CASES = CASES + [MUON_CASE, PRODIGY_CASE]
