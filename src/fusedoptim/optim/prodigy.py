"""Prodigy: Adam with a learned step-size scale D (kernels "prodigy_stats" + "prodigy").

The D estimate is shared by every param group (as in prodigyopt): a step runs the first pass
(moments, ``s``, and the two sums D needs) over every group, updates D in double, then runs
the second pass (the update) over every group. The class overrides the step loop's ``_run``
(first pass, per group) and finishes the step after it (D, second pass); the NumPy twin in
:mod:`fusedoptim.reference` overrides the two passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import numpy as np

from .. import _kernels
from .. import _validation as v
from .._backend import FusedBackend
from .._gate import NONFINITE
from .._spec import OptSpec, ScalarSlot, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import FloatArray, GradsArg, ParamsArg

_STATS = _kernels.REDUCE_IDS["prodigy_stats"]
_APPLY = _kernels.KERNEL_IDS["prodigy"]
_COLS = {name: k for k, name in enumerate(_kernels.SCALARS["prodigy"])}
_MODE = _COLS["mode"]
# pass 2's own columns, the row's last three: d_eps, step_b, mode
_PASS2 = slice(_COLS["d_eps"], _MODE + 1)
assert _PASS2.stop == len(_COLS) and _COLS["step_b"] == _PASS2.start + 1
# pass 1 mode bits (prodigy.pxi.tp)
L2, MOMENTUM, FIRST = 1, 2, 4
# pass 2 mode bits
DECOUPLED = 4
#: the group-level D state (prodigyopt's param_groups keys), and its per-param copies
D_STATE = ("d", "d_max", "d_numerator", "k")


def _beta3(value: object, name: str) -> float | None:
    """None (then beta3 = sqrt(beta2)) or a number in [0, 1)."""
    return None if value is None else v.unit_interval(value, name)


class ProdigyHyper(NamedTuple):
    """Prodigy's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    beta3: Annotated[float | None, _beta3] = None
    eps: Annotated[float, v.positive] = 1e-8
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    decouple: Annotated[bool, v.flag] = True
    use_bias_correction: Annotated[bool, v.flag] = False
    safeguard_warmup: Annotated[bool, v.flag] = False
    d0: Annotated[float, v.positive] = 1e-6
    d_coef: Annotated[float, v.finite_nonneg] = 1.0
    # A limit on D's growth: below 1 it would shrink D every step, to 0 (which no step and
    # no checkpoint can continue from), so it is refused.
    growth_rate: Annotated[float, partial(v.at_least, bound=1.0, note=" (inf: unrestricted)")] \
        = math.inf


@dataclass
class _Step:
    """One step's shared values: D going in (group 0's, as prodigyopt reads them), the lr
    (the largest group's), group 0's betas, flags and coefficients, and the sums the first
    pass accumulates over every group, in group order."""

    d: float
    d_max: float
    d_numerator: float
    k: int
    lr: float
    first: ProdigyHyper          # group 0's hyperparameters
    d0_last: float               # the last group's d0 (prodigyopt's "d == d0" test reads it)
    numerator: float = 0.0       # sum over groups of (d / d0) dlr sum g (p0 - p)
    denom: float = 0.0           # sum |s|
    pending: list[tuple[_kernels.Plan, ProdigyHyper, Any]] = field(default_factory=list)
    # Fixed for the step, and read by every group's rows and by the D update: computed once
    # (this is per-step Python overhead, ~10% of a 1e5-element step).
    beta3: float = field(init=False)
    dlr: float = field(init=False)

    def __post_init__(self) -> None:
        h = self.first
        self.beta3 = math.sqrt(h.beta2) if h.beta3 is None else float(h.beta3)
        if h.use_bias_correction:
            k = self.k
            bias_correction: float = (((1 - h.beta2 ** (k + 1)) ** 0.5)
                                      / (1 - h.beta1 ** (k + 1)))
        else:
            bias_correction = 1.0
        self.dlr = self.d * self.lr * bias_correction

    def coef(self, hyper: ProdigyHyper) -> float:
        """The group's weight of its sum g (p0 - p) in the numerator: (d / d0) dlr."""
        return (self.d / hyper.d0) * self.dlr

    def pass1_row(self, hyper: ProdigyHyper) -> tuple[float, ...]:
        """Pass 1's scalars for a group (mode without the first-step bit); pass 2's own
        three columns are filled by pass2_tail."""
        h, d, dlr = self.first, self.d, self.dlr
        wd = hyper.weight_decay
        sc = (d / hyper.d0) * d if hyper.safeguard_warmup else (d / hyper.d0) * dlr
        mode = (L2 if wd != 0 and not h.decouple else 0) | (MOMENTUM if h.beta1 > 0 else 0)
        return (1.0, h.beta1, d * (1 - h.beta1), h.beta2, d * d * (1 - h.beta2), self.beta3, sc,
                wd, -wd * dlr, dlr, 0.0, 0.0, float(mode))

    def update(self) -> tuple[float, float, float, float]:
        """prodigyopt's D update from the sums: (d, d_max, d_numerator, d_hat)."""
        d, d_max = self.d, self.d_max
        d_numerator = self.d_numerator * self.beta3 + self.numerator
        d_hat = self.first.d_coef * d_numerator / self.denom
        if d == self.d0_last:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d = min(d_max, d * self.first.growth_rate)
        return d, d_max, d_numerator, d_hat

    def pass2_tail(self, hyper: ProdigyHyper, d_new: float) -> tuple[float, float, float]:
        """Pass 2's own scalars for a group, given the new D: (d_eps, step_b, mode); the
        others (decay, dlr, weight_decay) are pass 1's."""
        h, dlr = self.first, self.dlr
        wd = hyper.weight_decay
        mode = ((L2 if wd != 0 and not h.decouple else 0) | (MOMENTUM if h.beta1 > 0 else 0)
                | (DECOUPLED if wd != 0 and h.decouple else 0))
        return (d_new * hyper.eps, dlr * d_new, float(mode))


def _set_row(plan: _kernels.Plan, hyper: ProdigyHyper, st: _Step, sign: float,
             first: Any) -> None:
    """A group's scalars for pass 1 (pass 2 then sets only its last three columns);
    ``sign``: 1/grad_scale; `first`: the tensors on their first step (p0 = p), or None."""
    hp = plan.hp_array
    row = st.pass1_row(hyper)
    hp[...] = row
    if sign != 1.0:
        hp[:, 0] = sign
    if first:
        for t in first:
            hp[t, _MODE] = row[_MODE] + FIRST


def _fused_stats(plan: _kernels.Plan, hyper: ProdigyHyper, st: _Step) -> None:
    """Pass 1 over a bound plan whose row is set; its sums into `st`."""
    _, (numerator, denom) = plan.reduce(_STATS)
    st.numerator += st.coef(hyper) * numerator
    st.denom += denom


def _fused_apply(plan: _kernels.Plan, hyper: ProdigyHyper, st: _Step, d_new: float) -> None:
    """Pass 2: d' eps, dlr d' and the pass's mode into the row pass 1 used, then the update."""
    plan.hp_array[:, _PASS2] = st.pass2_tail(hyper, d_new)
    plan.run(_APPLY)


def prodigy_scalars(step: int, d: float, d_max: float, d_numerator: float, k: float,
                    lr: float, beta1: float, beta2: float, beta3: float | None, eps: float,
                    weight_decay: float, decouple: bool, use_bias_correction: bool,
                    safeguard_warmup: bool, d0: float, d_coef: float, growth_rate: float
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pass 1's scalars from the D state (order: _kernels.SCALARS['prodigy']) and the D state
    unchanged: D is updated between the passes, from sums over every tensor."""
    hyper = ProdigyHyper(lr, beta1, beta2, beta3, eps, weight_decay, decouple,
                         use_bias_correction, safeguard_warmup, d0, d_coef, growth_rate)
    st = _Step(d, d_max, d_numerator, int(k), lr, hyper, d0)
    return st.pass1_row(hyper), (d, d_max, d_numerator, k)


def _functional_run(plan: _kernels.Plan, hyper: ProdigyHyper) -> None:
    """The functional entry's step (one group): D from the first active tensor's scalar
    state, both passes, the new D state into every active tensor's."""
    active = plan.active_array.astype(bool)
    t0 = int(np.argmax(active))
    d, d_max, d_numerator, k = (float(x) for x in plan.sstate_array[t0])
    st = _Step(d, d_max, d_numerator, int(k), hyper.lr, hyper, hyper.d0)
    first = np.flatnonzero(active & (plan.steps_array == 1)).tolist()
    _set_row(plan, hyper, st, float(plan.hp_array[t0, 0]), first)  # (1/grad_scale: none here)
    if hyper.lr > 0:
        _fused_stats(plan, hyper, st)
    elif first:
        _copy_p0(plan)
    if st.denom == 0.0:                        # prodigyopt returns here: no step is counted
        plan.steps_array[active] -= 1
        return
    d, d_max, d_numerator, _ = st.update()
    _fused_apply(plan, hyper, st, d)
    plan.sstate_array[active] = (d, d_max, d_numerator, k + 1)


def _copy_p0(plan: _kernels.Plan) -> None:
    """p0 = p for the tensors on their first step, in a group whose lr is 0 (no pass 1 runs
    there; prodigyopt still keeps p0 from the first step)."""
    p0s = plan.column(5)
    for t, p in enumerate(plan.params):
        if plan.active_array[t] and plan.steps_array[t] == 1:
            np.copyto(p0s[t], p)


PRODIGY_SPEC = OptSpec(
    "prodigy", ProdigyHyper, prodigy_scalars, pairs={"betas": ("beta1", "beta2")},
    run=_functional_run,
    # The sums are folded per tensor in a fixed order; the twin folds the same segments.
    per_tensor=True,
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs"), Slot("s", "ss"),
           Slot("p0", "p0s", hint="param.copy() (it is set to the param on step 1 anyway)")),
    scalar_state=(ScalarSlot("d", "ds", init="d0"), ScalarSlot("d_max", "d_maxs", init="d0"),
                  ScalarSlot("d_numerator", "d_numerators"), ScalarSlot("k", "ks")),
    doc="""Fused Prodigy step over lists (see :class:`fusedoptim.Prodigy` for the rule): one
    param group.

    The D state is shared by the params: ``ds``, ``d_maxs``, ``d_numerators`` and ``ks``
    hold one float per param, all equal (start them at ``d0``, ``d0``, 0 and 0); the step
    reads the first param that has a grad, and writes the new values to every param that
    has one. ``exp_avgs``, ``exp_avg_sqs`` and ``ss`` start at zero, ``p0s`` anywhere (a
    param's first step, ``state_steps[i] == 0``, sets it to the param). As in prodigyopt,
    a step whose sum of ``|s|`` is zero (all grads zero) updates the moments and ``s`` but
    not the params, and does not count: ``state_steps`` and ``ks`` stay.""")

#: Validate Prodigy hyperparameters (ProdigyHyper's fields, in order); return them canonical.
check_prodigy = PRODIGY_SPEC.check


def _check_d_state(group: Mapping[str, Any], label: str) -> None:
    """A group's D state, as a step reads it: d and d_max numbers > 0 (inf allowed: a run
    may diverge, as prodigyopt's may), d_numerator any number, k an integer >= 0."""
    for key in ("d", "d_max"):
        x = group.get(key)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0:
            raise ValueError(f"{label}[{key!r}] must be a number > 0 (Prodigy's D "
                             f"estimate), got {x!r}")
    x = group.get("d_numerator")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{label}['d_numerator'] must be a number, got {x!r}")
    x = group.get("k")
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
        raise ValueError(f"{label}['k'] must be an integer >= 0 (the steps taken), got {x!r}")


class _ProdigyBackend(FusedBackend):
    """The fused kernels, without the per-step scalars call: Prodigy's passes set every
    scalar themselves from the step's shared D (Prodigy._run)."""

    def apply(self, opt: Any, gi: int, plan: _kernels.Plan, cache: Any, grads: Any,
              fresh: Any, inv_scale: float | None) -> None:
        if plan.advance() == 0:
            return                  # no param of this group has a grad
        # A tensor whose state was just created is on its first step (its p0 = p).
        opt._run(plan, cache.hyper, 1.0 if inv_scale is None else inv_scale, fresh)


class Prodigy(Optimizer):
    r"""Prodigy (Mishchenko and Defazio, 2023, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner"; Algorithm 3, Adam form), with prodigyopt 1.1.2's semantics.

    Adam whose step is scaled by an estimate D of the distance to the solution, learned as
    it goes: leave ``lr`` at 1. With g the gradient (plus ``weight_decay * p`` when
    ``decouple=False``), ``p0`` the param at its first step, and D going in ``d``::

        dlr = d * lr * bc,    bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))  (1 without
                                                                   use_bias_correction)
        m = beta1 * m + d * (1 - beta1) * g
        v = beta2 * v + d^2 * (1 - beta2) * g^2
        s = beta3 * s + (d / d0) * dlr * g            ((d / d0) * d under safeguard_warmup)
        d_numerator = beta3 * d_numerator + (d / d0) * dlr * sum(g * (p0 - p))
        d_hat = d_coef * d_numerator / sum(|s|)
        d = max(d, d_hat) if d == d0;   d_max = max(d_max, d_hat);
        d = min(d_max, d * growth_rate)                                      (the new d')
        p = p - weight_decay * dlr * p                                   (decouple=True)
        p = p - dlr * m / (sqrt(v) + d' * eps)       (beta1 = 0: p - dlr d' g / (...))

    The sums run over every param of every group, accumulated in double in a fixed order
    (bitwise the same for any thread count). A step whose ``sum(|s|)`` is 0 (every grad zero,
    or every group's lr 0) updates m, v and s but not the params, and is not counted, as in
    prodigyopt. Two fused passes per step, with no temporary the size of the model: the
    first updates m, v, s (and p0 on a param's first step) and adds up both sums; D is
    updated in double; the second applies the update.

    **Param groups share D**, as in prodigyopt: ``d``, ``d_max``, ``d_numerator`` and ``k``
    (steps taken) live in every group (``param_groups[i]``, saved by ``state_dict()``; after
    a step also ``d_denom`` = sum(|s|) and ``d_hat``), all equal; a step reads group 0's.
    Like prodigyopt, a step takes ``betas``, ``beta3``, ``use_bias_correction``,
    ``decouple``, ``d_coef`` and ``growth_rate`` from group 0, ``weight_decay``, ``eps``,
    ``d0`` and ``safeguard_warmup`` from each group, and the test ``d == d0`` from the last
    group's d0; every group's lr must be the largest one's or 0 (a ValueError otherwise,
    before anything is written). A group with lr 0 adds nothing to the sums and its moments
    stay, but it still takes the second pass with the shared dlr (so decoupled decay and,
    with beta1 = 0, the gradient step still move it), as in prodigyopt.

    Differences from prodigyopt 1.1.2: ``decouple=False`` folds the decay into the gradient
    inside the kernel, leaving the caller's grads untouched (prodigyopt adds it to
    ``p.grad`` in place); ``exp_avg`` and ``p0`` are full-size buffers even when beta1 = 0
    or the param starts at zero (prodigyopt then skips ``exp_avg`` and keeps a 0-d ``p0``);
    lr may be 0 (prodigyopt requires > 0 at construction). prodigyopt's ``slice_p``
    (statistics on every p-th element) and ``fsdp_in_use`` (sharded params) are not offered:
    this is every element, in one process. Each param's state also holds a copy of the D
    state (``d``, ``d_max``, ``d_numerator``, ``k``), which the functional entry needs.

    Optax: ``optax.contrib.prodigy(learning_rate=lr, betas=betas, beta3=beta3, eps=eps,
    estim_lr0=d0, estim_lr_coef=d_coef, weight_decay=weight_decay,
    safeguard_warmup=safeguard_warmup)`` is this rule for one group with
    ``use_bias_correction=True`` (Optax always corrects), ``decouple=True`` and
    ``growth_rate=inf`` (Optax has no growth limit: its D is max(D, d_hat), which is what
    prodigyopt's d_max logic gives without one). ``decouple=False`` maps to
    ``optax.chain(optax.add_decayed_weights(weight_decay), optax.contrib.prodigy(...,
    weight_decay=0.0))``. With beta1 = 0 they differ: prodigyopt steps by
    ``dlr * d' * g`` (the new D), Optax by ``dlr * d * g`` (its m = d g, the old D). Optax
    has no zero-``sum(|s|)`` exit (its D becomes NaN there) and no param groups.

    Args (prodigyopt's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): scales the learned step, default 1.0, >= 0.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        beta3 (float or None): decay of ``s`` and ``d_numerator``; default None:
            sqrt(beta2).
        eps (float): added to sqrt(v) (times d), default 1e-8, > 0.
        weight_decay (float): default 0, >= 0.
        decouple (bool): default True: AdamW-style decay ``p -= weight_decay * dlr * p``;
            False: an L2 term ``weight_decay * p`` added to the gradient.
        use_bias_correction (bool): default False; Adam's bias corrections, in dlr.
        safeguard_warmup (bool): default False; leave lr out of ``s``'s update (for
            warm-up schedules).
        d0 (float): the initial D, default 1e-6, > 0.
        d_coef (float): multiplies d_hat, default 1.0, >= 0 (the knob to tune).
        growth_rate (float): D grows by at most this factor per step, default inf, >= 1.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq``, ``s``, ``p0``, and the D copies.
    """

    spec = PRODIGY_SPEC
    _backend = _ProdigyBackend()
    group_state_keys = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")
    _step_state: _Step | None = None

    def __init__(self, params: ParamsArg, lr: float = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = math.inf, *,
                 skip_nonfinite: bool = False) -> None:
        d0 = v.positive(d0, "d0")
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps,
                                      weight_decay=weight_decay, decouple=decouple,
                                      use_bias_correction=use_bias_correction,
                                      safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                                      growth_rate=growth_rate, d=d0, d_max=d0,
                                      d_numerator=0.0, k=0),
                         skip_nonfinite=skip_nonfinite)
        for gi, g in enumerate(self.param_groups):
            _check_d_state(g, f"param_groups[{gi}]")

    def step(self, grads: GradsArg = None,
             grad_scale: float | FloatArray | None = None) -> bool:
        """One step of every group (see the class doc); checked before anything is
        written. Returns False when ``skip_nonfinite`` skipped it, else True."""
        groups = self.param_groups
        hypers: list[ProdigyHyper] = [self._validate_group(g, c)  # type: ignore[misc]
                                      for g, c in zip(groups, self._caches)]
        for gi, g in enumerate(groups):
            d, d_max, k = g["d"], g["d_max"], g["k"]
            if not (type(d) is float and type(d_max) is float and d > 0 and d_max > 0
                    and type(g["d_numerator"]) is float and type(k) is int and k >= 0):
                _check_d_state(g, f"param_groups[{gi}]")
        lr = max(h.lr for h in hypers)
        for gi, h in enumerate(hypers):
            if h.lr not in (lr, 0.0):
                raise ValueError(f"param_groups[{gi}]['lr'] is {h.lr!r} and another group's "
                                 f"is {lr!r}: Prodigy's groups share one step size, so each "
                                 f"group's lr must be the same, or 0 to freeze the group")
        g0 = groups[0]
        st = _Step(float(g0["d"]), float(g0["d_max"]), float(g0["d_numerator"]),
                   int(g0["k"]), lr, hypers[0], hypers[-1].d0)
        self._step_state = st
        try:
            if not super().step(grads, grad_scale):
                return False
        finally:
            self._step_state = None
        if st.denom == 0.0:
            # prodigyopt returns here: m, v and s moved, nothing else; no step is counted.
            for plan, _, _ in st.pending:
                plan.steps_array[plan.active_array.astype(bool)] -= 1
            return True
        d, d_max, d_numerator, d_hat = st.update()
        for plan, hyper, extra in st.pending:
            self._apply(plan, hyper, st, d, extra)
        k = st.k + 1
        for g in groups:
            g.update(d=d, d_max=d_max, d_numerator=d_numerator, d_denom=st.denom,
                     d_hat=d_hat, k=g["k"] + 1)
        for cache in self._caches:
            if cache.plan is not None:
                cache.plan.sstate_array[:] = (d, d_max, d_numerator, k)
        return True

    def _run(self, plan: _kernels.Plan, hyper: Any, sign: float = 1.0,
             first: Any = None) -> None:
        """Pass 1 of one group (the step loop calls this per group that has grads);
        ``sign``: 1/grad_scale; `first`: the tensors on their first step."""
        st = self._step_state
        if st is None:
            raise RuntimeError("Prodigy._run runs only inside Prodigy.step")
        st.pending.append((plan, hyper, None))
        _set_row(plan, hyper, st, sign, first)
        if hyper.lr > 0:
            _fused_stats(plan, hyper, st)
            return
        if first:
            _copy_p0(plan)
        if self.skip_nonfinite:
            # the armed check needs a pass to run in; the gate stops it (a pass that stops
            # early on its own flag is refused under an armed gate)
            plan.reduce(NONFINITE, 1)

    def _apply(self, plan: _kernels.Plan, hyper: ProdigyHyper, st: _Step, d_new: float,
               extra: Any) -> None:
        """Pass 2 of one group."""
        _fused_apply(plan, hyper, st, d_new)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """As :meth:`fusedoptim.Optimizer.load_state_dict`, and each saved group's D state
        (``d``, ``d_max``, ``d_numerator``, ``k``) is checked first."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if isinstance(groups, (list, tuple)):
            for gi, g in enumerate(groups):
                if isinstance(g, Mapping):
                    _check_d_state({**self.param_groups[gi], **g} if gi < len(
                        self.param_groups) else g, f"state_dict['param_groups'][{gi}]")
        super().load_state_dict(state_dict)
