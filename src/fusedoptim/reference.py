"""Plain NumPy reference optimizers: the oracle for the tests and the baseline for benchmarks.

One formula per line, in the param's dtype, in the same order of operations as the fused
kernel (so float32 results agree to the last bit on a default build). Never on the fast path.

Each function has the signature of its twin in :mod:`fusedoptim.functional`. Each optimizer
class has a twin here of the same name (``fo.reference.Adam``, ...) with the API of its fused
class (same validation, state and checkpoints) that steps through the function here, one
tensor at a time. The twins are made when this module is imported, one per registered
optimizer spec, each paired with the function named after its spec (a spec made with
``OptSpec.variant``, like AdamW's, steps through its base's function).

Types: the reference does not validate, so each state list is typed as what it reads: an
array for every param that has a grad (entries of params without one are not read).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _spec
from . import optim  # noqa: F401  imported for its side effect: every spec is registered
from ._backend import ReferenceBackend
from .optim.adabelief import check_adabelief
from .optim.adam import check_adam
from .optim.ademamix import check_ademamix, scheduled_alpha, scheduled_beta3
from .optim.adopt import check_adopt, clip_value
from .optim.adan import check_adan
from .optim.adamax import check_adamax
from .optim.asgd import check_asgd
from .optim.lion import check_lion
from .optim.madgrad import check_madgrad, madgrad_scalars
from .optim.nadam import check_nadam
from .optim.radam import check_radam
from .optim.rprop import check_rprop
from .optim.adadelta import check_adadelta
from .optim.rmsprop import check_rmsprop
from .optim.adagrad import check_adagrad
from .optim.sgd import check_sgd
from .optim.schedule_free import check_schedule_free_adamw, check_schedule_free_sgd, \
    schedule
from .optim.signsgd import check_signsgd
from .optim.lamb import check_lamb
from .optim.yogi import check_yogi
from .optim import prodigy as _optim_prodigy
from .optim.prodigy import check_prodigy
from .optim.lars import check_lars
from .optim.adafactor import Adafactor as _Adafactor, _GroupStep, check_adafactor
from .optim import lbfgs as _optim_lbfgs
from . import _kernels
from .optim.muon import BFLOAT16, adjusted_ratio, check_muon, lerp_mode
from . import _validation as _v
from .grad_utils import CLIP_EPS, _norm_type

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._typing import ArraysArg, BufferList, FloatArray, StepList

    #: one array per param (every param that steps has one)
    Arrays = Sequence[FloatArray]
    #: lamb's _store hook: (param index, m, v) -> (m, v) as stored
    StoreHook = Callable[[int, FloatArray, FloatArray], tuple[FloatArray, FloatArray]]


def _signed_decayed(p: FloatArray, g: FloatArray, lr: float, weight_decay: float,
                    decoupled_weight_decay: bool, maximize: bool) -> tuple[FloatArray, FloatArray]:
    """Every optimizer's common first lines: the signed grad (with L2 decay folded in) and the
    param after decoupled decay, in the kernels' operation order."""
    if maximize:
        g = -g
    p_decayed = p
    if weight_decay != 0 and not decoupled_weight_decay:
        g = g + weight_decay * p
    if weight_decay != 0 and decoupled_weight_decay:
        p_decayed = p * (1.0 - lr * weight_decay)
    return g, p_decayed

def adam(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
         max_exp_avg_sqs: Arrays | None, state_steps: StepList, *, lr: float, beta1: float,
         beta2: float, eps: float, weight_decay: float = 0.0, amsgrad: bool = False,
         maximize: bool = False, decoupled_weight_decay: bool = False,
         bias_correction: bool = True) -> None:
    check_adam(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
               bias_correction)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, p_decayed = _signed_decayed(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
        m[...] = beta1 * m + (1.0 - beta1) * g
        v[...] = beta2 * v + (1.0 - beta2) * g * g
        if bias_correction:
            step_size = lr / (1.0 - beta1 ** t)
            inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** t)
        else:
            step_size, inv_bias_correction2_sqrt = lr, 1.0
        v_hat = v
        if amsgrad:
            assert max_exp_avg_sqs is not None      # amsgrad needs them
            np.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v_hat = max_exp_avg_sqs[i]
        denom = np.sqrt(v_hat) * inv_bias_correction2_sqrt + eps
        p[...] = p_decayed - step_size * m / denom


def adamw(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
          max_exp_avg_sqs: Arrays | None, state_steps: StepList, *, lr: float, beta1: float,
          beta2: float, eps: float, weight_decay: float = 1e-2, amsgrad: bool = False,
          maximize: bool = False, bias_correction: bool = True) -> None:
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr=lr,
         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
         maximize=maximize, decoupled_weight_decay=True, bias_correction=bias_correction)


def adamax(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_infs: Arrays,
           state_steps: StepList, *, lr: float, beta1: float, beta2: float, eps: float,
           weight_decay: float = 0.0, maximize: bool = False) -> None:
    check_adamax(lr, beta1, beta2, eps, weight_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, u = exp_avgs[i], exp_infs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        m[...] = beta1 * m + (1.0 - beta1) * g
        u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
        step_size = lr / (1.0 - beta1 ** t)
        p[...] = p - step_size * m / u


def nadam(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
          mu_products: list[float], state_steps: StepList, *, lr: float, beta1: float,
          beta2: float, eps: float, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    check_nadam(lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay,
                maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, p_decayed = _signed_decayed(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
        inv_bias_correction2 = 1.0 / (1.0 - beta2 ** t)
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_products[i] = mu_products[i] * mu
        mu_product_next = mu_products[i] * mu_next
        m[...] = beta1 * m + (1.0 - beta1) * g
        v[...] = beta2 * v + (1.0 - beta2) * g * g
        grad_coef = -lr * (1.0 - mu) / (1.0 - mu_products[i])
        avg_coef = -lr * mu_next / (1.0 - mu_product_next)
        denom = np.sqrt(v * inv_bias_correction2) + eps
        p[...] = p_decayed + (grad_coef * g + avg_coef * m) / denom


def radam(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
          state_steps: StepList, *, lr: float, beta1: float, beta2: float, eps: float,
          weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
          maximize: bool = False) -> None:
    check_radam(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, p_decayed = _signed_decayed(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
        m[...] = beta1 * m + (1.0 - beta1) * g
        v[...] = beta2 * v + (1.0 - beta2) * g * g
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2 ** t / bias_correction2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                             / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            step_size = lr * rect * math.sqrt(bias_correction2) / bias_correction1
            p[...] = p_decayed - step_size * m / (np.sqrt(v) + eps)
        else:
            step_size = lr / bias_correction1
            p[...] = p_decayed - step_size * m


def adan(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
         exp_avg_diffs: Arrays, neg_pre_grads: Arrays, state_steps: StepList, *, lr: float,
         betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
         weight_decay: float = 0.0, no_prox: bool = False) -> None:
    check_adan(lr, betas, eps, weight_decay, no_prox)
    beta1, beta2, beta3 = betas
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, n, d, neg_prev = exp_avgs[i], exp_avg_sqs[i], exp_avg_diffs[i], neg_pre_grads[i]
        state_steps[i] += 1
        t = state_steps[i]
        # the official release starts neg_pre_grad at -g: the first difference is g - g
        diff = g - g if t == 1 else g + neg_prev
        m[...] = beta1 * m + (1.0 - beta1) * g
        d[...] = beta2 * d + (1.0 - beta2) * diff
        nesterov = g + beta2 * diff
        n[...] = beta3 * n + (1.0 - beta3) * nesterov * nesterov
        neg_prev[...] = -g
        step_size = lr / (1.0 - beta1 ** t)
        step_size_diff = lr * beta2 / (1.0 - beta2 ** t)
        inv_bias_correction3_sqrt = 1.0 / math.sqrt(1.0 - beta3 ** t)
        denom = np.sqrt(n) * inv_bias_correction3_sqrt + eps
        p_decayed = p
        if weight_decay != 0 and no_prox:
            p_decayed = p * (1.0 - lr * weight_decay)
        p_new = p_decayed - (step_size * m + step_size_diff * d) / denom
        if weight_decay != 0 and not no_prox:
            p_new = p_new * (1.0 / (1.0 + lr * weight_decay))
        p[...] = p_new


def adabelief(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_vars: Arrays,
              max_exp_avg_vars: Arrays | None, state_steps: StepList, *, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-16,
              weight_decay: float = 0.0, amsgrad: bool = False, weight_decouple: bool = True,
              fixed_decay: bool = False, rectify: bool = True,
              degenerated_to_sgd: bool = True) -> None:
    check_adabelief(lr, beta1, beta2, eps, weight_decay, amsgrad, weight_decouple,
                    fixed_decay, rectify, degenerated_to_sgd)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, s = exp_avgs[i], exp_avg_vars[i]
        state_steps[i] += 1
        t = state_steps[i]
        decay = 1.0
        if weight_decay != 0 and weight_decouple:
            decay = 1.0 - weight_decay if fixed_decay else 1.0 - lr * weight_decay
        if weight_decay != 0 and not weight_decouple:
            g = g + weight_decay * p
        p_decayed = p * decay
        m[...] = beta1 * m + (1.0 - beta1) * g
        residual = g - m
        s[...] = beta2 * s + (1.0 - beta2) * residual * residual
        s[...] = s + eps
        s_hat = s
        if amsgrad:
            assert max_exp_avg_vars is not None      # amsgrad needs them
            np.maximum(max_exp_avg_vars[i], s, out=max_exp_avg_vars[i])
            if not rectify:
                s_hat = max_exp_avg_vars[i]
        # p = p_decayed - step_size * m / (sqrt(s_hat) * denom_scale + denom_add), the three
        # scalars giving adabelief-pytorch's update for the step (as the kernel has them)
        denom_scale, denom_add = 1.0, eps
        if not rectify:
            step_size = lr / (1 - beta1 ** t)
            denom_scale = 1.0 / math.sqrt(1 - beta2 ** t)
        else:
            # RAdam's rectification, in adabelief-pytorch's expression order
            beta2_t = beta2 ** t
            n_sma_max = 2 / (1 - beta2) - 1
            n_sma = n_sma_max - 2 * t * beta2_t / (1 - beta2_t)
            if n_sma >= 5:
                step_size = math.sqrt(
                    (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma
                    * n_sma_max / (n_sma_max - 2)) / (1 - beta1 ** t) * lr
            else:
                # the SGD-style step p - lr / (1 - beta1^t) m, or (not degenerated_to_sgd) none
                step_size = 1.0 / (1 - beta1 ** t) * lr if degenerated_to_sgd else 0.0
                denom_scale, denom_add = 0.0, 1.0
        p[...] = p_decayed - step_size * m / (np.sqrt(s_hat) * denom_scale + denom_add)


def lion(params: Arrays, grads: BufferList, exp_avgs: Arrays, state_steps: StepList, *,
         lr: float, beta1: float, beta2: float, weight_decay: float = 0.0,
         maximize: bool = False) -> None:
    check_lion(lr, beta1, beta2, weight_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m = exp_avgs[i]
        state_steps[i] += 1
        if maximize:
            g = -g
        c = beta1 * m + (1.0 - beta1) * g
        p_decayed = p
        if weight_decay != 0:
            p_decayed = p * (1.0 - lr * weight_decay)
        p[...] = p_decayed - lr * np.sign(c)
        m[...] = beta2 * m + (1.0 - beta2) * g


def ademamix(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_slows: Arrays,
             exp_avg_sqs: Arrays, state_steps: StepList, *, lr: float, beta1: float,
             beta2: float, beta3: float, alpha: float = 5.0, t_alpha: int | None = None,
             t_beta3: int | None = None, eps: float = 1e-8, weight_decay: float = 1e-2,
             maximize: bool = False) -> None:
    check_ademamix(lr, beta1, beta2, beta3, alpha, t_alpha, t_beta3, eps, weight_decay,
                   maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m1, m2, nu = exp_avgs[i], exp_avg_slows[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        alpha_t = scheduled_alpha(t, alpha, t_alpha)
        beta3_t = scheduled_beta3(t, beta1, beta3, t_beta3)
        if maximize:
            g = -g
        p_decayed = p
        if weight_decay > 0:
            p_decayed = p * (1.0 - lr * weight_decay)
        m1[...] = beta1 * m1 + (1.0 - beta1) * g
        m2[...] = beta3_t * m2 + (1.0 - beta3_t) * g
        nu[...] = beta2 * nu + (1.0 - beta2) * g * g
        inv_bias_correction1 = 1.0 / (1.0 - beta1 ** t)
        inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** t)
        denom = np.sqrt(nu) * inv_bias_correction2_sqrt + eps
        p[...] = p_decayed - lr * ((m1 * inv_bias_correction1 + alpha_t * m2) / denom)


def adopt(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
          state_steps: StepList, *, lr: float, beta1: float, beta2: float, eps: float = 1e-6,
          weight_decay: float = 0.0, decouple: bool = False, maximize: bool = False) -> None:
    check_adopt(lr, beta1, beta2, eps, weight_decay, decouple, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        if maximize:
            g = -g
        if weight_decay != 0 and not decouple:
            g = g + weight_decay * p
        if t == 1:                      # the first step only sets v
            v[...] = v + g * g
            continue
        p_decayed = p
        if weight_decay != 0 and decouple:
            p_decayed = p * (1.0 - lr * weight_decay)
        denom = np.maximum(np.sqrt(v), eps)         # NaN stays NaN, as torch.clamp
        clip = clip_value(t)
        u = np.minimum(np.maximum(g / denom, -clip), clip)
        m[...] = beta1 * m + (1.0 - beta1) * u
        p[...] = p_decayed - lr * m
        v[...] = beta2 * v + (1.0 - beta2) * g * g


def rprop(params: Arrays, grads: BufferList, prevs: Arrays, step_sizes: Arrays,
          state_steps: StepList, *, step_size_min: float, step_size_max: float,
          etaminus: float, etaplus: float, maximize: bool = False) -> None:
    check_rprop(step_size_min=step_size_min, step_size_max=step_size_max,
                etaminus=etaminus, etaplus=etaplus, maximize=maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        prev, s = prevs[i], step_sizes[i]
        state_steps[i] += 1
        if maximize:
            g = -g
        agree = g * prev
        # NaN agreement keeps NaN as its factor (torch: sign(NaN) = NaN).
        factor = np.where(agree > 0, etaplus,
                          np.where(agree < 0, etaminus, np.where(agree == 0, 1.0, agree)))
        s[...] = np.clip(s * factor, step_size_min, step_size_max)
        g = np.where(agree < 0, 0.0, g)
        p[...] = p - np.sign(g) * s
        prev[...] = g


def asgd(params: Arrays, grads: BufferList, axs: Arrays, mus: list[float], etas: list[float],
         state_steps: StepList, *, lr: float, lambd: float, alpha: float, t0: float,
         weight_decay: float = 0.0, maximize: bool = False) -> None:
    check_asgd(lr, lambd, alpha, t0, weight_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        ax = axs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        p[...] = p * (1.0 - lambd * etas[i])
        p[...] = p - etas[i] * g
        if mus[i] != 1.0:
            ax[...] = ax + (p - ax) * mus[i]
        else:
            ax[...] = p
        with np.errstate(over="ignore"):   # a power beyond the doubles is inf: eta = 0
            etas[i] = float(lr / (np.float64(1.0 + lambd * lr * t) ** alpha))
        mus[i] = 1.0 / max(1.0, t - t0)


def _torch_momentum(buffers: list[NDArray[Any]] | list[NDArray[Any] | None], i: int,
                    p: FloatArray, g: FloatArray, momentum: float,
                    dampening: float) -> FloatArray:
    """torch's momentum buffer for param i: it starts at g (a new array stored in the list),
    then b = momentum * b + (1 - dampening) * g in place. Returns it."""
    buf = buffers[i]
    if buf is None:
        new: FloatArray = np.array(g, dtype=p.dtype)
        buffers[i] = new
        return new
    buf[...] = momentum * buf + (1.0 - dampening) * g
    return buf


def sgd(params: Arrays, grads: BufferList,
        # an array, or None (created here), per param; NDArray[Any] as list is invariant
        momentum_buffer_list: list[NDArray[Any]] | list[NDArray[Any] | None] | None,
        state_steps: StepList | None = None, *, lr: float, momentum: float = 0.0,
        dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
        maximize: bool = False, momentum_style: str = "torch") -> None:
    check_sgd(lr, momentum, dampening, weight_decay, nesterov, maximize, momentum_style)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        if state_steps is not None:
            state_steps[i] += 1
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        d = g
        if momentum != 0 and momentum_style == "torch":
            assert momentum_buffer_list is not None     # momentum needs them
            buf = _torch_momentum(momentum_buffer_list, i, p, g, momentum, dampening)
            d = g + momentum * buf if nesterov else buf
        if momentum != 0 and momentum_style == "ema":
            assert momentum_buffer_list is not None     # momentum needs them
            if momentum_buffer_list[i] is None:
                momentum_buffer_list[i] = np.zeros_like(p)
            v = momentum_buffer_list[i]
            assert v is not None                        # created just above
            v[...] = momentum * v + (1.0 - momentum) * g
            d = (1.0 - momentum) * g + momentum * v if nesterov else v
        p[...] = p - lr * d


def signsgd(params: Arrays, grads: BufferList,
            # an array, or None (created here), per param; NDArray[Any] as list is invariant
            momentum_buffer_list: list[NDArray[Any]] | list[NDArray[Any] | None] | None,
            state_steps: StepList, *, lr: float, momentum: float = 0.0,
            dampening: float = 0.0, weight_decay: float = 0.0,
            maximize: bool = False) -> None:
    check_signsgd(lr, momentum, dampening, weight_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        state_steps[i] += 1
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        if momentum != 0:
            assert momentum_buffer_list is not None     # momentum needs them
            g = _torch_momentum(momentum_buffer_list, i, p, g, momentum, dampening)
        p[...] = p - lr * np.sign(g)


def adagrad(params: Arrays, grads: BufferList, state_sums: Arrays, state_steps: StepList, *,
            lr: float, lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
            maximize: bool = False) -> None:
    check_adagrad(lr, lr_decay, weight_decay, eps, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        s = state_sums[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        clr = lr / (1.0 + (t - 1) * lr_decay)
        s[...] = s + g * g
        std = np.sqrt(s) + eps
        p[...] = p - clr * g / std


def rmsprop(params: Arrays, grads: BufferList, square_avgs: Arrays, grad_avgs: Arrays | None,
            momentum_buffer_list: Arrays | None, state_steps: StepList, *, lr: float,
            alpha: float, eps: float, weight_decay: float = 0.0, momentum: float = 0.0,
            centered: bool = False, maximize: bool = False,
            bias_correction: bool = False) -> None:
    check_rmsprop(lr, alpha, eps, weight_decay, momentum, centered, maximize, bias_correction)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        v = square_avgs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        v[...] = alpha * v + (1.0 - alpha) * g * g
        var = v / (1.0 - alpha ** t) if bias_correction else v
        if centered:
            assert grad_avgs is not None            # centered needs them
            a = grad_avgs[i]
            a[...] = a + (1.0 - alpha) * (g - a)
            var = var - a * a
        avg = np.sqrt(var) + eps
        if momentum > 0:
            assert momentum_buffer_list is not None     # momentum needs them
            b = momentum_buffer_list[i]
            b[...] = momentum * b + g / avg
            p[...] = p - lr * b
        else:
            p[...] = p - lr * g / avg


def adadelta(params: Arrays, grads: BufferList, square_avgs: Arrays, acc_deltas: Arrays,
             state_steps: StepList, *, lr: float, rho: float, eps: float,
             weight_decay: float = 0.0, maximize: bool = False) -> None:
    check_adadelta(lr, rho, eps, weight_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        v, u = square_avgs[i], acc_deltas[i]
        state_steps[i] += 1
        g, _ = _signed_decayed(p, g, lr, weight_decay, False, maximize)
        v[...] = rho * v + (1.0 - rho) * g * g
        std = np.sqrt(v + eps)
        delta = np.sqrt(u + eps) / std * g
        u[...] = rho * u + (1.0 - rho) * delta * delta
        p[...] = p - lr * delta


def lamb(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
         state_steps: StepList, *, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float = 0.0, clamp_value: float = 10.0, bias_correction: bool = True,
         maximize: bool = False, _store: StoreHook | None = None) -> None:
    """``_store(i, m, v) -> (m, v)`` (the twins' hook for state stored inexactly: bfloat16,
    int8, int4): store param i's updated moments and return them as stored, which the norm
    and the update then use, as the fused kernels do."""
    check_lamb(lr, beta1, beta2, eps, weight_decay, clamp_value, bias_correction, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        g, _ = _signed_decayed(p, g, lr, 0.0, False, maximize)   # decay goes into u, below
        m[...] = beta1 * m + (1.0 - beta1) * g
        v[...] = beta2 * v + (1.0 - beta2) * g * g
        if _store is not None:
            m, v = _store(i, m, v)
        if bias_correction:
            inv_bias_correction1 = 1.0 / (1.0 - beta1 ** t)
            inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** t)
        else:
            inv_bias_correction1, inv_bias_correction2_sqrt = 1.0, 1.0
        u = (m * inv_bias_correction1) / (np.sqrt(v) * inv_bias_correction2_sqrt + eps)
        if weight_decay != 0:
            u = u + weight_decay * p
        param_norm = math.sqrt(np.sum(np.square(p, dtype=np.float64)))
        update_norm = math.sqrt(np.sum(np.square(u, dtype=np.float64)))
        if param_norm > 0 and update_norm > 0:
            trust_ratio = min(param_norm, clamp_value) / update_norm
        else:
            trust_ratio = 1.0
        p[...] = p - (lr * trust_ratio) * u


# ReferenceBackend passes _store to a function that says it takes one.
lamb.takes_store = True     # type: ignore[attr-defined]


def lars(params: Arrays, grads: BufferList, momentum_buffer_list: Arrays | None,
         state_steps: StepList | None = None, *, lr: float, momentum: float = 0.9,
         weight_decay: float = 0.0, trust_coefficient: float = 0.001, eps: float = 1e-8,
         nesterov: bool = False, maximize: bool = False) -> None:
    check_lars(lr, momentum, weight_decay, trust_coefficient, eps, nesterov, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        if state_steps is not None:
            state_steps[i] += 1
        g, _ = _signed_decayed(p, g, lr, 0.0, False, maximize)   # decay after the norms
        param_norm = math.sqrt(np.sum(np.square(p, dtype=np.float64)))
        grad_norm = math.sqrt(np.sum(np.square(g, dtype=np.float64)))
        if param_norm > 0 and grad_norm > 0:
            trust_ratio = trust_coefficient * param_norm / (grad_norm + weight_decay * param_norm
                                                            + eps)
        else:
            trust_ratio = 1.0
        d = g
        if weight_decay != 0:
            d = d + weight_decay * p
        d = trust_ratio * d
        if momentum != 0:
            assert momentum_buffer_list is not None     # momentum needs them
            b = momentum_buffer_list[i]
            b[...] = momentum * b + d
            d = d + momentum * b if nesterov else b
        p[...] = p - lr * d


def _torch_lerp(a: Any, b: Any, w: Any) -> Any:
    """torch.lerp(a, b, w) by its formula, in the arrays' dtype (w of that dtype)."""
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (w.dtype.type(1) - w)


def adafactor(params: Arrays, grads: BufferList, row_vars: Sequence[FloatArray | None],
              col_vars: Sequence[FloatArray | None], variances: Sequence[FloatArray | None],
              state_steps: StepList, *, d: float = 1.0, lr: float = 1e-2,
              beta2_decay: float = -0.8, weight_decay: float = 0.0, eps1: float | None = None,
              eps2: float = 1e-3, maximize: bool = False) -> None:
    """torch.optim.Adafactor's step (its functional signature), one tensor at a time, in the
    param's dtype except the norms and means, which are taken in double."""
    check_adafactor(lr, beta2_decay, eps1, eps2, d, weight_decay, maximize, eps_label="")
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        dt = p.dtype.type
        e1 = float(np.finfo(p.dtype).eps) if eps1 is None else eps1
        if maximize:
            g = -g
        state_steps[i] += 1
        t = float(state_steps[i])
        w = dt(t ** beta2_decay)                       # the lerp weight: 1 - beta2_t
        rho = min(lr, 1.0 / t ** 0.5)
        numel = math.sqrt(max(p.size, 1))
        rms_p = math.sqrt(np.sum(np.square(p, dtype=np.float64))) / numel
        alpha = max(eps2, rms_p) * rho
        if weight_decay != 0:
            p[...] = p * dt(1.0 - lr * weight_decay)
        if p.ndim >= 2:
            if p.size == 0:
                continue
            R, C = p.shape[-2], p.shape[-1]
            r, c = row_vars[i], col_vars[i]
            assert r is not None and c is not None
            g2 = np.square(g, dtype=np.float64)
            r[...] = _torch_lerp(r, (np.sum(g2, axis=-1, keepdims=True) / C).astype(p.dtype), w)
            c[...] = _torch_lerp(c, (np.sum(g2, axis=-2, keepdims=True) / R).astype(p.dtype), w)
            # mean over the rows of each matrix, in double (one contiguous run per matrix)
            mean_r = r.reshape(-1, R).sum(axis=1, dtype=np.float64) / R
            rmean = np.maximum(mean_r.astype(p.dtype), dt(e1)).reshape(p.shape[:-2] + (1, 1))
            v = (r * c) / rmean
        else:
            var = variances[i]
            assert var is not None
            var[...] = _torch_lerp(var, g * g, w)
            v = var
        u = g * (dt(1) / np.sqrt(np.maximum(v, dt(e1 * e1))))
        rms_u = math.sqrt(np.sum(np.square(u, dtype=np.float64))) / (numel * d)
        p[...] = p + dt(-alpha / max(1.0, rms_u)) * u


def _lerp(start: FloatArray, end: FloatArray, weight: float, big: bool) -> FloatArray:
    """torch's lerp in the arrays' dtype: start + w * (end - start) for a "small" weight,
    else end - (end - start) * (1 - w) (ATen's two formulas; `big` says which)."""
    w = start.dtype.type(weight)
    out: FloatArray
    if big:
        out = end - (end - start) * (start.dtype.type(1) - w)
    else:
        out = start + w * (end - start)
    return out


def _schedule_free_step(p: FloatArray, z: FloatArray, u: FloatArray, ckp1: float, lr: float,
                        beta1: float) -> None:
    """The y and z updates both Schedule-Free steps share, in the param's dtype: torch's
    lerp of y toward z by c (its branch by |c| < 0.5), the step of y, the step of z."""
    dt = p.dtype.type
    c = dt(ckp1)
    y = p + c * (z - p) if abs(ckp1) < 0.5 else z - (z - p) * (dt(1) - c)
    p[...] = y + dt(lr * (beta1 * (1.0 - ckp1) - 1.0)) * u
    z[...] = z - dt(lr) * u


def _schedule_free_z(zs: list[FloatArray | None], i: int, p: FloatArray, step: int
                     ) -> FloatArray:
    """Param i's z: its first step starts z as a copy of the param (a None entry: created)."""
    z = zs[i]
    if z is None:
        z = zs[i] = p.copy()
    elif step == 1:
        z[...] = p
    return z


def schedule_free_adamw(params: Arrays, grads: BufferList, zs: list[FloatArray | None],
                        exp_avg_sqs: Arrays, weight_sums: list[float], lr_maxs: list[float],
                        state_steps: StepList, *, lr: float, beta1: float, beta2: float,
                        eps: float, weight_decay: float = 0.0, warmup_steps: int = 0,
                        r: float = 0.0, weight_lr_power: float = 2.0,
                        maximize: bool = False) -> None:
    check_schedule_free_adamw(lr, beta1, beta2, eps, weight_decay, warmup_steps, r,
                              weight_lr_power, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        state_steps[i] += 1
        k = state_steps[i]
        lr_k, ckp1, weight_sums[i], lr_maxs[i] = schedule(k, weight_sums[i], lr_maxs[i], lr,
                                                          warmup_steps, r, weight_lr_power)
        dt = p.dtype.type
        if maximize:
            g = -g
        z = _schedule_free_z(zs, i, p, k)
        v = exp_avg_sqs[i]
        v[...] = v * dt(beta2) + dt(1.0 - beta2) * g * g
        u = g / (np.sqrt(v * dt(1.0 / (1.0 - beta2 ** k))) + dt(eps))
        if weight_decay != 0:
            u = u + dt(weight_decay) * p
        _schedule_free_step(p, z, u, ckp1, lr_k, beta1)


def schedule_free_sgd(params: Arrays, grads: BufferList, zs: list[FloatArray | None],
                      weight_sums: list[float], lr_maxs: list[float], state_steps: StepList,
                      *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                      warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                      maximize: bool = False) -> None:
    check_schedule_free_sgd(lr, momentum, weight_decay, warmup_steps, r, weight_lr_power,
                            maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        state_steps[i] += 1
        k = state_steps[i]
        lr_k, ckp1, weight_sums[i], lr_maxs[i] = schedule(k, weight_sums[i], lr_maxs[i], lr,
                                                          warmup_steps, r, weight_lr_power)
        dt = p.dtype.type
        u = -g if maximize else g
        z = _schedule_free_z(zs, i, p, k)
        if weight_decay != 0:
            u = u + dt(weight_decay) * p
        _schedule_free_step(p, z, u, ckp1, lr_k, momentum)


def schedule_free_swap(params: Sequence[FloatArray], zs: Sequence[FloatArray],
                       weight: float) -> None:
    """Schedule-Free's train()/eval(): each param moved along the line through its z,
    ``p = lerp(p, z, weight)`` in the param's dtype (torch's lerp: its branch by
    |weight| < 0.5)."""
    for p, z in zip(params, zs):
        p[...] = _lerp(p, z, weight, abs(weight) >= 0.5)


def _bf16(x: FloatArray) -> FloatArray:
    """float32 values rounded to bfloat16 (nearest even), as float32."""
    return x.astype(BFLOAT16).astype(np.float32)


def zeropower_via_newtonschulz(update: FloatArray, ns_coefficients: tuple[float, float, float],
                               ns_steps: int, eps: float, ns_dtype: str | None = None
                               ) -> FloatArray:
    """torch's _zeropower_via_newtonschulz, in the update's dtype (ns_dtype None) or with
    torch's bfloat16 cast (ns_dtype "bfloat16": every product rounded to bfloat16, the
    products accumulated in float32). A tall matrix is transposed to wide and back."""
    a, b, c = ns_coefficients
    bf16 = ns_dtype == "bfloat16"
    x = update.astype(np.float32) if bf16 else update.copy()
    if bf16:
        x = _bf16(x)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    norm = math.sqrt(np.sum(np.square(x, dtype=np.float64)))
    if bf16:
        scale = np.float32(max(BFLOAT16.type(norm), BFLOAT16.type(eps)))
        x = _bf16(x / scale)
    else:
        scale = max(x.dtype.type(norm), x.dtype.type(eps))
        x = x / scale
    for _ in range(ns_steps):
        gram = x @ x.T
        if bf16:
            gram = _bf16(gram)
        mix = b * gram + c * (gram @ gram)
        if bf16:
            mix = _bf16(mix)
        x = a * x + mix @ x
        if bf16:
            x = _bf16(x)
    return x.T if tall else x


def muon(params: Arrays, grads: BufferList, muon_momentum_bufs: Arrays, state_steps: StepList,
         *, lr: float, weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
         ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
         eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None,
         ns_dtype: str | None = None) -> None:
    check_muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
               adjust_lr_fn, ns_dtype)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        state_steps[i] += 1
        mode = lerp_mode(p.dtype, momentum, nesterov)
        buf = muon_momentum_bufs[i]
        buf[...] = _lerp(buf, g, 1.0 - momentum, bool(mode & 2))
        update = _lerp(g, buf, momentum, bool(mode & 4)) if nesterov else buf
        x = zeropower_via_newtonschulz(update, ns_coefficients, ns_steps, eps, ns_dtype)
        step = lr * adjusted_ratio(p.shape, adjust_lr_fn)
        p[...] = p * p.dtype.type(1.0 - lr * weight_decay)
        p[...] = p - p.dtype.type(step) * x.astype(p.dtype)


def madgrad_cbrt(x: FloatArray) -> FloatArray:
    """The fused kernels' cube root (cython_kernels/madgrad.pxi.tp ``_cbrt``), bit for bit: of
    x >= 0 in x's dtype (float32 or float64), from the bit pattern's first guess, Halley's
    iteration and a Newton step, with + - * / only (within 1 ulp; 0, +inf and NaN are their
    own roots)."""
    x = np.asarray(x)
    dt = x.dtype.type
    one, two, third = dt(1), dt(2), dt(1.0 / 3.0)
    with np.errstate(all="ignore"):     # 1/0, inf/inf on the lanes the last line discards
        if x.dtype == np.float32:
            tiny = x < dt(1.1754943508222875e-38)
            xs = np.where(tiny, x * dt(16777216.0), x)
            # bits / 3 as the kernel takes it: int(float(bits) * (1/3 in float)), truncated
            third_of_bits = (xs.view(np.int32).astype(np.float32) * third).astype(np.int32)
            y = (third_of_bits + np.int32(709958130)).view(np.float32)
            rounds, back = 1, dt(0.00390625)
        else:
            tiny = x < dt(2.2250738585072014e-308)
            xs = np.where(tiny, x * dt(18014398509481984.0), x)
            hi = (xs.view(np.uint64) >> np.uint64(32)).astype(np.uint32)
            hi = hi // np.uint32(3) + np.uint32(715094163)
            y = (hi.astype(np.uint64) << np.uint64(32)).view(np.float64)
            rounds, back = 2, dt(3.814697265625e-06)
        r = one / xs
        for _ in range(rounds):
            t = y * y * r * y
            y = y * (t + two) / (two * t + one)
        y = y - (y - xs / (y * y)) * third          # one Newton step
        y = np.where(tiny, y * back, y)
        out: FloatArray = np.where((x > 0) & (x < np.inf), y, x)
    return out


def _madgrad_rms(gs: FloatArray, eps: Any) -> FloatArray:
    """cbrt(grad_sum_sq) + eps, with +inf where that is 0 (so that s / rms is 0 there)."""
    rms = madgrad_cbrt(gs) + eps
    out: FloatArray = np.where(rms == 0, np.inf, rms).astype(gs.dtype)
    return out


def madgrad(params: Arrays, grads: BufferList,
            # an array, or None (created here), per param; NDArray[Any] as list is invariant
            grad_sum_sqs: list[NDArray[Any]] | list[NDArray[Any] | None],
            ss: list[NDArray[Any]] | list[NDArray[Any] | None],
            x0s: list[NDArray[Any]] | list[NDArray[Any] | None] | None,
            state_steps: StepList, *, lr: float, momentum: float = 0.9,
            weight_decay: float = 0.0, eps: float = 1e-6, decouple_decay: bool = False,
            maximize: bool = False) -> None:
    check_madgrad(lr, momentum, weight_decay, eps, decouple_decay, maximize)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        state_steps[i] += 1
        fresh = momentum != 0 and x0s is not None and x0s[i] is None
        dt = p.dtype.type
        sign, lamb, wd, e, mom, ck, dc, _ = (dt(x) for x in madgrad_scalars(
            state_steps[i], lr, momentum, weight_decay, eps, decouple_decay, maximize, fresh))
        g = sign * g + wd * p       # wd is 0 without the L2 term, as in the kernel
        gs, s = grad_sum_sqs[i], ss[i]
        # The twin gets None for buffers created this step (the spec's x0 slot is fresh):
        # they start at zero.
        if gs is None:
            gs = grad_sum_sqs[i] = np.zeros_like(p)
        if s is None:
            s = ss[i] = np.zeros_like(p)
        if momentum != 0 and not fresh:
            assert x0s is not None
            x0 = x0s[i]
        else:
            # without momentum the release recomputes x0; a new x0 is computed the same way
            x0 = p + s / _madgrad_rms(gs, e)
            if fresh:
                assert x0s is not None
                x0s[i] = x0
        gs_new = gs + lamb * g * g
        s_new = s + lamb * g
        z = x0 - s_new / _madgrad_rms(gs_new, e)
        p_new = p * mom + ck * z if momentum != 0 else z
        p[...] = p_new - dc * p     # dc is 0 without decoupled decay, as in the kernel
        gs[...] = gs_new
        s[...] = s_new


# -- gradient utilities -------------------------------------------------------------------------

def _grad_list(arrays: ArraysArg) -> list[FloatArray]:
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    elif isinstance(arrays, dict):
        arrays = list(arrays.values())
    return [a for a in arrays if a is not None]


def global_norm(arrays: ArraysArg) -> float:
    return math.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in _grad_list(arrays)))


def all_finite(arrays: ArraysArg) -> bool:
    return all(bool(np.isfinite(a).all()) for a in _grad_list(arrays))


def clip_grad_norm_(grads: ArraysArg, max_norm: float, norm_type: float | str = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    p = _norm_type(norm_type)
    max_norm = _v.nonneg(max_norm, "max_norm")
    grads = _grad_list(grads)
    if p == math.inf:
        total = max((float(np.max(np.abs(g), initial=0.0)) for g in grads), default=0.0)
        if any(np.isnan(g).any() for g in grads):
            total = math.nan
    else:
        total = sum(np.sum(np.abs(g.astype(np.float64)) ** p) for g in grads) ** (1.0 / p)
    total = float(total)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {p} of the gradients is {total}")
    clip_coef = max_norm / (total + CLIP_EPS)
    if not clip_coef >= 1.0:
        for g in grads:
            g[...] = g * clip_coef
    return total


def clip_grad_value_(grads: ArraysArg, clip_value: float) -> None:
    clip_value = _v.nonneg(clip_value, "clip_value")
    for g in _grad_list(grads):
        g[...] = np.minimum(np.maximum(g, -clip_value), clip_value)


def _coalesce(p: FloatArray, g: Any) -> tuple[NDArray[np.int64], FloatArray]:
    """A SparseGrad's (or a dense grad's) unique rows, sorted, and each row's values summed
    one after another in the order given: (rows, values of shape (len(rows), row_len))."""
    from .optim.sparse_adam import SparseGrad
    rows_n = p.shape[0]
    row_len = p.size // rows_n if rows_n else 0
    if not isinstance(g, SparseGrad):
        return np.arange(rows_n), np.asarray(g).reshape(rows_n, row_len)
    idx = g.indices
    values = g.values.reshape(idx.shape[0], row_len)
    if idx.shape[0] == 0:
        return idx, values
    order = np.argsort(idx, kind="stable")
    ranked = idx[order]
    starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    counts = np.diff(np.append(starts, idx.shape[0]))
    total = values[order[starts]]
    for r in range(1, int(counts.max())):
        more = counts > r
        total[more] = total[more] + values[order[starts[more] + r]]
    return ranked[starts], total


def sparse_adam(params: Arrays, grads: Sequence[Any], exp_avgs: Arrays, exp_avg_sqs: Arrays,
                state_steps: StepList, *, lr: float = 1e-3, beta1: float = 0.9,
                beta2: float = 0.999, eps: float = 1e-8, maximize: bool = False) -> None:
    for i, p in enumerate(params):
        if grads[i] is None:
            continue
        state_steps[i] += 1
        step = int(state_steps[i])
        rows, g = _coalesce(p, grads[i])
        if g.size == 0:
            continue
        dt = p.dtype.type
        if maximize:
            g = -g
        shape = (p.shape[0], g.shape[1])
        pr, mr, vr = (a.reshape(shape) for a in (p, exp_avgs[i], exp_avg_sqs[i]))
        m = mr[rows]
        v = vr[rows]
        mu = (g - m) * dt(1.0 - beta1)
        vu = (g * g - v) * dt(1.0 - beta2)
        mr[rows] = m + mu
        vr[rows] = v + vu
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2 = 1.0 - beta2 ** step
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        denom = np.sqrt(vu + v) + dt(eps)
        pr[rows] = pr[rows] + dt(-step_size) * ((mu + m) / denom)


# -- the twins of the optimizer classes ---------------------------------------------------------

def yogi(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
         state_steps: StepList, *, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float = 0.0) -> None:
    check_yogi(lr, beta1, beta2, eps, weight_decay)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        m[...] = beta1 * m + (1.0 - beta1) * g
        g2 = g * g
        v[...] = v + -(1.0 - beta2) * np.sign(v - g2) * g2
        step_size = lr / (1.0 - beta1 ** t)
        inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** t)
        p[...] = p - step_size * m / (np.sqrt(v) * inv_bias_correction2_sqrt + eps)


def prodigy(params: Arrays, grads: BufferList, exp_avgs: Arrays, exp_avg_sqs: Arrays,
            ss: Arrays, p0s: Arrays, ds: list[float], d_maxs: list[float],
            d_numerators: list[float], ks: list[float], state_steps: StepList, *, lr: float,
            beta1: float, beta2: float, beta3: float | None = None, eps: float = 1e-8,
            weight_decay: float = 0.0, decouple: bool = True, use_bias_correction: bool = False,
            safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
            growth_rate: float = math.inf) -> None:
    """One group's Prodigy step (the functional entry's; the twin class runs the passes
    over every group, :class:`Prodigy` below). The sums are each tensor's, added in order
    (the fused step folds the driver's segments instead: equal up to rounding)."""
    hyper = check_prodigy(lr, beta1, beta2, beta3, eps, weight_decay, decouple,
                          use_bias_correction, safeguard_warmup, d0, d_coef, growth_rate)
    active = [i for i, g in enumerate(grads) if g is not None]
    if not active:
        return
    i0 = active[0]
    st = _optim_prodigy._Step(ds[i0], d_maxs[i0], d_numerators[i0], int(ks[i0]), lr, hyper,
                              d0)
    for i in active:
        state_steps[i] += 1
    numerator = denom = 0.0
    for i in active:
        if state_steps[i] == 1:
            p0s[i][...] = params[i]
        if lr > 0:
            g = grads[i]
            assert g is not None
            num_terms, s_abs = _prodigy_pass1(params[i], g, exp_avgs[i],
                                              exp_avg_sqs[i], ss[i], p0s[i], st, hyper)
            numerator += _lanes_sum(num_terms.reshape(-1))
            denom += _lanes_sum(s_abs.reshape(-1))
    st.numerator = st.coef(hyper) * numerator
    st.denom = denom
    if denom == 0.0:
        for i in active:
            state_steps[i] -= 1
        return
    d, d_max, d_numerator, _ = st.update()
    for i in active:
        g = grads[i]
        assert g is not None
        _prodigy_pass2(params[i], g, exp_avgs[i], exp_avg_sqs[i], st, hyper, d)
        ds[i], d_maxs[i], d_numerators[i], ks[i] = d, d_max, d_numerator, st.k + 1


def _prodigy_pass1(p: FloatArray, g: FloatArray, m: FloatArray, v: FloatArray,
                   s: FloatArray, p0: FloatArray, st: Any, hyper: Any
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The first pass on one tensor, as the kernel does it (p0 already set on a first
    step); returns the terms of its two sums in double: g (p0 - p) and |s|."""
    row = st.pass1_row(hyper)
    beta1, d1, beta2, d2, beta3, sc, wd, mode = (row[1], row[2], row[3], row[4], row[5],
                                                 row[6], row[7], int(row[12]))
    if mode & _optim_prodigy.L2:
        g = g + wd * p
    diff = p0 - p
    if mode & _optim_prodigy.MOMENTUM:
        m[...] = beta1 * m + d1 * g
    v[...] = beta2 * v + d2 * g * g
    s[...] = beta3 * s + sc * g
    return g.astype(np.float64) * diff.astype(np.float64), np.abs(s.astype(np.float64))


def _prodigy_pass2(p: FloatArray, g: FloatArray, m: FloatArray, v: FloatArray, st: Any,
                   hyper: Any, d_new: float) -> None:
    row = st.pass1_row(hyper)
    decay, dlr, wd = row[8], row[9], row[7]
    d_eps, step_b, mode_f = st.pass2_tail(hyper, d_new)
    mode = int(mode_f)
    p_decayed = p
    if mode & _optim_prodigy.DECOUPLED:
        p_decayed = p + decay * p
    if mode & _optim_prodigy.MOMENTUM:
        p[...] = p_decayed - dlr * (m / (np.sqrt(v) + d_eps))
    else:
        if mode & _optim_prodigy.L2:
            g = g + wd * p_decayed
        p[...] = p_decayed - step_b * (g / (np.sqrt(v) + d_eps))


def _twin(spec: _spec.OptSpec[Any]) -> type[Any]:
    """The NumPy reference twin of `spec`'s class: the class itself, stepped by the
    ReferenceBackend through the reference function of the spec (of its base, for a
    variant)."""
    cls = spec.cls
    assert cls is not None                  # registered specs are bound
    name = (spec.base or spec).name
    fn = globals().get(name)
    if not callable(fn):
        raise ImportError(f"fusedoptim.reference has no function {name!r} for "
                          f"{cls.__name__} (spec {spec.name!r}): every optimizer needs its "
                          f"NumPy reference function, with the functional signature")
    return type(cls.__name__, (cls,), {
        "__doc__": f"NumPy reference twin of :class:`fusedoptim.{cls.__name__}`.",
        "__module__": __name__, "_backend": ReferenceBackend(fn)})


def __getattr__(name: str) -> Any:
    """The twins are made below, at import; this declares them to type checkers (as Any)."""
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _s in _spec.registered():
    _t = _twin(_s)
    globals()[_t.__name__] = _t
del _s, _t


class SparseAdam(optim.SparseAdam):
    """NumPy reference twin of :class:`fusedoptim.SparseAdam`."""

    _reference = staticmethod(sparse_adam)
class _AdafactorReferenceStep(_GroupStep):
    """A group of the Adafactor twin: the same plan (for the grads' checks and the step
    counts), stepped through :func:`adafactor` one tensor at a time."""

    def run(self, hyper: Any, grads: Sequence[FloatArray | None]) -> None:
        active = [t for t, g in enumerate(grads) if g is not None]
        if not active:
            return
        lr, beta2_decay, eps1, eps2, d, wd, maximize = hyper
        steps = [int(self.plan.steps_array[t]) for t in active]
        st = [self.state[t] for t in active]
        factored = [len(x) == 2 for x in st]
        adafactor([self.params[t] for t in active], [grads[t] for t in active],
                  [x[0] if f else None for x, f in zip(st, factored)],
                  [x[1] if f else None for x, f in zip(st, factored)],
                  [None if f else x[0] for x, f in zip(st, factored)], steps, d=d, lr=lr,
                  beta2_decay=beta2_decay, weight_decay=wd, eps1=eps1, eps2=eps2,
                  maximize=maximize)
        for t, s in zip(active, steps):
            self.plan.steps_array[t] = s


class Adafactor(_Adafactor):
    """NumPy reference twin of :class:`fusedoptim.Adafactor`."""

    _group_step = _AdafactorReferenceStep


# -- L-BFGS -------------------------------------------------------------------------------------
#
# torch.optim.LBFGS's vector operations, one per line, over flat NumPy vectors. The dot
# products add in the shared driver's order (lbfgs_dot), so fo.reference.LBFGS reproduces
# fo.LBFGS bit for bit; the algorithm around them is fusedoptim.optim.lbfgs.LBFGS's own.

#: the driver's work unit and reduction lanes (fusedoptim._driver, elementwise.pxi)
_UNIT = _kernels.CHUNK_ELEMENTS
_LANES = 32


def _lanes_sum(terms: NDArray[np.float64]) -> float:
    """The driver's sum of `terms` (doubles) over one flat tensor: per 16K-element unit, 32
    lanes (lane j adds terms j, j + 32, ... in order), folded pairwise; the units' sums
    added in order from 0."""
    total = 0.0
    for start in range(0, terms.size, _UNIT):
        seg = terms[start:start + _UNIT]
        rows = np.zeros((-(-seg.size // _LANES), _LANES))
        rows.reshape(-1)[:seg.size] = seg
        acc = np.add.reduce(rows, axis=0)     # row by row: the lanes' order
        w = _LANES // 2
        while w >= 1:
            acc = acc[:w] + acc[w:2 * w]
            w //= 2
        total = total + float(acc[0])
    return total


def lbfgs_dot(x: FloatArray, y: FloatArray) -> float:
    """x.y in double as the fused kernels add it (each product of the stored values)."""
    return _lanes_sum(x.astype(np.float64) * y.astype(np.float64))


def lbfgs_sumabs(x: FloatArray) -> float:
    """|x|_1 in double as the fused sumabs kernel adds it."""
    return _lanes_sum(np.abs(x.astype(np.float64)))


class _LBFGSReferenceOps(_optim_lbfgs.OpsBase):
    """The vector work of fo.reference.LBFGS (the interface of
    fusedoptim.optim.lbfgs._FusedOps): torch's tensor operations in NumPy."""

    def __init__(self, params: list[FloatArray], labels: list[str],
                 flat_param: FloatArray | None) -> None:
        super().__init__(params, labels, flat_param)
        self.d = np.zeros(self.size, self.dtype)
        self.x: list[FloatArray] = []

    def ensure_x(self) -> None:
        pass

    def _amax(self, v: FloatArray) -> Any:
        return self.D(np.max(np.abs(v))) if v.size else self.D(0)

    def gather(self, grads: list[FloatArray | None], flat_grad: FloatArray | None,
               live: Sequence[Any]) -> tuple[FloatArray, Any]:
        for g, p, label in zip(grads, self.params, self.labels):
            if g is not None:
                _kernels.check_buffer(g, p, label, False)
        flat = np.concatenate([np.zeros(p.size, self.dtype) if g is None else g.reshape(-1)
                               for g, p in zip(grads, self.params)])
        return flat, self._amax(flat)

    def sumabs(self, g: FloatArray) -> Any:
        return self.D(lbfgs_sumabs(g))

    def dot(self, x: FloatArray, y: FloatArray, c: float = 1.0) -> float:
        return lbfgs_dot(x, self.D(c) * y)

    def first_direction(self, g: FloatArray) -> tuple[Any, Any]:
        self.d = -g
        return self.D(lbfgs_dot(g, self.d)), self._amax(self.d)

    def pair(self, g: FloatArray, prev: FloatArray, t: Any
             ) -> tuple[Any, Any, None, FloatArray, FloatArray]:
        y = g - prev
        s = self.d * self.D(t)
        return self.D(lbfgs_dot(y, s)), self.D(lbfgs_dot(y, y)), None, y, s

    def release(self, y: FloatArray, s: FloatArray) -> None:
        pass

    def two_loop(self, g: FloatArray, dirs: list[FloatArray], stps: list[FloatArray],
                 ro: list[Any], H_diag: Any, al: list[Any], sq: None) -> tuple[Any, Any]:
        D = self.D
        q = -g
        for i in range(len(dirs) - 1, -1, -1):
            al[i] = D(lbfgs_dot(stps[i], q)) * ro[i]
            q = q + (-al[i]) * dirs[i]
        r = q * D(H_diag)
        for i in range(len(dirs)):
            be_i = D(lbfgs_dot(dirs[i], r)) * ro[i]
            r = r + (al[i] - be_i) * stps[i]
        self.d = r
        return D(lbfgs_dot(g, self.d)), self._amax(self.d)

    def move(self, t: Any, mode: int) -> None:
        t = self.D(t)
        at = 0
        if mode == 1:
            self.x = [p.copy() for p in self.params]
        for i, p in enumerate(self.params):
            d = self.d[at:at + p.size].reshape(p.shape)
            base = self.x[i] if mode == 2 else p
            p[...] = base + t * d
            at += p.size

    def adopt_grad(self, values: Any, live: Sequence[Any]) -> FloatArray:
        return np.array(values, self.dtype)

    def adopt_pair(self, y: Any, s: Any) -> tuple[FloatArray, FloatArray]:
        return np.array(y, self.dtype), np.array(s, self.dtype)


class LBFGS(_optim_lbfgs.LBFGS):
    """NumPy reference twin of :class:`fusedoptim.LBFGS` (bit for bit)."""

    _ops_type = _LBFGSReferenceOps


# -- blockwise quantization (the references of fusedoptim.quant) -------------------------------
#
# The maps, the quantizer and the dequantizer, unvalidated (fusedoptim.quant validates). Each
# float operation is one float32 operation, as the C codec (cython_kernels/quant.h) does it.

def _fma32(a: Any, b: Any, c: Any) -> NDArray[np.float32]:
    """float32 ``a*b + c`` rounded once, as a fused multiply-add does, for float32 inputs.

    The product of two float32 values is exact in float64. The float64 sum is rounded to odd
    (an inexact sum takes whichever of its two float64 neighbours has an odd last bit), and
    rounding a round-to-odd float64 to float32 is then the correctly rounded result, since
    float64 carries at least two more bits than float32 (53 >= 24 + 2)."""
    a64 = np.asarray(a, np.float32).astype(np.float64)
    b64 = np.asarray(b, np.float32).astype(np.float64)
    c64 = np.asarray(c, np.float32).astype(np.float64)
    p = a64 * b64                                   # exact
    s = p + c64
    bv = s - p                                      # Knuth's TwoSum: err is what s lost
    err = (p - (s - bv)) + (c64 - bv)
    away = np.nextafter(s, np.where(err > 0, np.inf, -np.inf))
    odd = (s.view(np.uint64) & np.uint64(1)) == 1
    r = np.where((err == 0) | odd, s, away)
    return r.astype(np.float32)


def _torch_linspace_f32(start: float, end: float, steps: int) -> NDArray[np.float32]:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` as torch's CPU kernel computes
    it with FMA (its AVX2 and AVX-512 builds): step = (end - start) / (steps - 1) in float32;
    element i of the first half is start + step*i, of the second half end - step*(steps-1-i),
    each a fused multiply-add. (torch's DEFAULT build, with no FMA, rounds twice and gives
    other last bits for steps >= 9; see fusedoptim.quant.dynamic_map.)"""
    s, e = np.float32(start), np.float32(end)
    step = (e - s) / np.float32(steps - 1)
    i = np.arange(steps)
    head = _fma32(step, i.astype(np.float32), s)
    tail = _fma32(-step, (steps - 1 - i).astype(np.float32), e)
    return np.where(i < steps // 2, head, tail).astype(np.float32)


def _dynamic_map_values(signed: bool, max_exponent_bits: int, total_bits: int) -> NDArray[np.float32]:
    """Dettmers' dynamic map (bitsandbytes' create_dynamic_map, without its zero padding).

    Decade k = 0..max_exponent_bits-1 holds the midpoints of a float32 linspace(0.1, 1) with
    2**(k + total_bits-1 - max_exponent_bits) + 1 points (twice as many midpoints when
    unsigned, where the sign bit is spent on the fraction), each midpoint (a + b) / 2 in
    float32, times float32(10**(k - max_exponent_bits + 1)) in float32 (and the negated
    scale when signed). Then 0 and 1 are added and the values sorted."""
    non_sign_bits = total_bits - 1
    parts = []
    for k in range(max_exponent_bits):
        npoints = 2 ** (k + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        bounds = _torch_linspace_f32(0.1, 1.0, npoints)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2)
        scale = 10.0 ** (k - max_exponent_bits + 1)
        parts.append(np.float32(scale) * means)
        if signed:
            parts.append(np.float32(-scale) * means)
    parts.append(np.array([0.0, 1.0], np.float32))
    values = np.sort(np.concatenate(parts)).astype(np.float32)
    assert values.size == 2 ** total_bits
    return values


def dynamic_map(signed: bool, bits: int = 8) -> NDArray[np.float32]:
    """The code maps of fusedoptim.quant.dynamic_map (see there for what each is and why).

    bits=8: the dynamic map of bitsandbytes (7 decades). bits=4, signed: the 4-bit dynamic map
    (3 decades) of Li et al. 2023 (torchao's create_dynamic_map(True, 3, 4)). bits=4,
    unsigned: the linear map without zero, k/16 for k = 1..16."""
    if bits == 8:
        return _dynamic_map_values(signed, 7, 8)
    if signed:
        return _dynamic_map_values(True, 3, 4)
    linear: NDArray[np.float32] = np.arange(1, 17, dtype=np.float32) / np.float32(16)
    return linear


def _nearest_code(y: NDArray[np.float32], code: NDArray[np.float32]) -> NDArray[np.uint8]:
    """For each y: argmin_k |y - code[k]|, each difference in float32; ties to the lower k.
    By brute force over the whole map, in chunks (this is the definition the C codec meets)."""
    out = np.empty(y.size, np.uint8)
    chunk = 4096
    for s in range(0, y.size, chunk):
        dist = np.abs(y[s:s + chunk, None] - code[None, :])     # float32
        out[s:s + chunk] = np.argmin(dist, axis=1)              # first minimum: lower index
    return out


def quantize_blockwise(x: NDArray[Any], code: NDArray[np.float32], block_size: int = 256,
                       bits: int = 8) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Blockwise quantization of x (flattened, read as float32) to the nearest codes of `code`.

    Per block of `block_size` elements (the last may be short):
      absmax = max |x|, in float32; NaN when the block holds a NaN or an Inf;
               0 when it is below the smallest normal float32 (2**-126, flushed to zero)
      valid  = absmax > 0                        (not 0, not NaN)
      y      = clip(x * (1/absmax), -1, 1)       (float32 reciprocal, float32 product)
      y      = 0 in a block that is not valid
      c      = argmin_k |y - code[k]|            (float32 differences, ties to the lower k)
    bits=4 packs element 2j in the high nibble and 2j+1 in the low nibble of byte j; an odd
    count leaves the last low nibble 0. Returns (codes, absmax), both 1-D."""
    xf = np.ascontiguousarray(x).reshape(-1).astype(np.float32)
    n = xf.size
    nblocks = -(-n // block_size)
    flat = np.zeros(nblocks * block_size, np.float32)
    flat[:n] = xf
    blocks = flat.reshape(nblocks, block_size)             # zero padding leaves absmax alone
    absmax = np.max(np.abs(blocks), axis=1, initial=np.float32(0))   # NaN propagates
    absmax = np.where(np.isfinite(absmax), absmax, np.float32(np.nan)).astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    absmax = np.where(absmax < tiny, np.float32(0), absmax).astype(np.float32)  # NaN stays
    valid = absmax > 0
    inv = np.float32(1) / np.where(valid, absmax, np.float32(1))
    with np.errstate(invalid="ignore", over="ignore"):      # non-finite blocks, zeroed below
        y = np.clip(blocks * inv[:, None], np.float32(-1), np.float32(1))
    y[~valid] = 0
    c = _nearest_code(y.reshape(-1)[:n], np.asarray(code, np.float32))
    if bits == 4:
        if n % 2:
            c = np.append(c, np.uint8(0))
        c = ((c[0::2] << 4) | c[1::2]).astype(np.uint8)
    return c, absmax


def dequantize_blockwise(codes: NDArray[np.uint8], absmax: NDArray[np.float32],
                         code: NDArray[np.float32], block_size: int = 256, bits: int = 8,
                         n: int | None = None, dtype: Any = np.float32) -> NDArray[Any]:
    """x = code[c] * absmax of its block, in float32, then cast to `dtype` (round to nearest
    even). bits=4 reads the high nibble first; n (default: every code) drops a padding
    nibble. Returns a 1-D array of n elements."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    if bits == 4:
        idx = np.empty(2 * flat.size, np.uint8)
        idx[0::2] = flat >> 4
        idx[1::2] = flat & 15
    else:
        idx = flat
    if n is None:
        n = idx.size
    scale = np.repeat(np.asarray(absmax, np.float32), block_size)[:n]
    x = np.asarray(code, np.float32)[idx[:n]] * scale       # float32 product
    return x.astype(dtype)


# -- rank-1 normalized 4-bit state (Li et al. 2023; the reference of cython_kernels/rank1.h) ---

def rank1_maxima(x: NDArray[Any], dims: tuple[int, ...]) -> NDArray[np.float32]:
    """The marginal maxima of |x| (read as float32, reshaped to `dims`): for each dimension a
    in turn, max |x| over every element whose index in dimension a is i, for each i. A NaN
    wins; an Inf or NaN maximum is stored as NaN. float32, sum(dims) values."""
    a = np.abs(np.ascontiguousarray(x).reshape(dims).astype(np.float32))
    parts = []
    for d in range(len(dims)):
        others = tuple(k for k in range(len(dims)) if k != d)
        parts.append(np.max(a, axis=others))                # NaN propagates
    m = np.concatenate(parts).astype(np.float32)
    return np.where(np.isfinite(m), m, np.float32(np.nan)).astype(np.float32)


def rank1_scales(maxima: NDArray[np.float32], dims: tuple[int, ...]) -> NDArray[np.float32]:
    """Each element's scale: the smallest of its marginal maxima (NaN if any is NaN), as an
    array of shape `dims`."""
    m = np.asarray(maxima, np.float32)
    s: NDArray[np.float32] | None = None
    off = 0
    for d, n in enumerate(dims):
        shape = [1] * len(dims)
        shape[d] = n
        part = m[off:off + n].reshape(shape)
        off += n
        s = part if s is None else np.minimum(s, part)      # np.minimum keeps a NaN
    assert s is not None
    return np.broadcast_to(s, dims).astype(np.float32)


def quantize_rank1(x: NDArray[Any], dims: tuple[int, ...]
                   ) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Rank-1 normalized 4-bit quantization of x (flattened, read as float32, as an array of
    shape `dims`) to the zero-free linear map k/16, k = 1..16:

      maxima = rank1_maxima(x, dims); s = rank1_scales(maxima, dims)
      valid  = s > 0                                (not 0, not NaN)
      c      = clip(ceil(16 * (x / s) - 1/2), 1, 16) - 1   (float32 division), 0 where not
               valid: the nearest code, ties to the lower index (cython_kernels/rank1.h)
    Codes packed as quantize_blockwise's 4-bit ones. Returns (codes, maxima), both 1-D."""
    xf = np.ascontiguousarray(x).reshape(-1).astype(np.float32)
    maxima = rank1_maxima(xf, dims)
    s = rank1_scales(maxima, dims).reshape(-1)
    valid = s > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(valid, (xf / np.where(valid, s, np.float32(1))) * np.float32(16),
                     np.float32(0)).astype(np.float32)
    c = np.clip(np.ceil(t - np.float32(0.5)), 1, 16).astype(np.uint8) - np.uint8(1)
    if c.size % 2:
        c = np.append(c, np.uint8(0))
    return ((c[0::2] << 4) | c[1::2]).astype(np.uint8), maxima


def dequantize_rank1(codes: NDArray[np.uint8], maxima: NDArray[np.float32],
                     dims: tuple[int, ...], code: NDArray[np.float32],
                     dtype: Any = np.float32) -> NDArray[Any]:
    """x = code[c] * its scale (rank1_scales), in float32, then cast to `dtype`. Returns a
    1-D array of prod(dims) elements."""
    n = int(np.prod(dims, dtype=np.int64))
    flat = np.ascontiguousarray(codes).reshape(-1)
    idx = np.empty(2 * flat.size, np.uint8)
    idx[0::2] = flat >> 4
    idx[1::2] = flat & 15
    s = rank1_scales(maxima, dims).reshape(-1)
    x = np.asarray(code, np.float32)[idx[:n]] * s             # float32 product
    return x.astype(dtype)


# -- Prodigy's twin: the two passes over every group in NumPy ------------------------------------

def _segment_total(terms: NDArray[np.float64]) -> float:
    """One driver segment's sum of `terms`: 32 lanes in order, folded pairwise."""
    rows = np.zeros((-(-terms.size // _LANES), _LANES))
    rows.reshape(-1)[:terms.size] = terms
    acc = np.add.reduce(rows, axis=0)
    w = _LANES // 2
    while w >= 1:
        acc = acc[:w] + acc[w:2 * w]
        w //= 2
    return float(acc[0])


def _plan_total(plan: _kernels.Plan, terms: list[NDArray[np.float64] | None]) -> float:
    """Plan.reduce's total of per-element `terms` (None: an inactive tensor): each tensor's
    segments in order, then the tensors in order."""
    seg_t, seg_start, seg_len, _ = plan.segments()
    per_tensor = [0.0] * len(terms)
    for t, a, n in zip(seg_t.tolist(), seg_start.tolist(), seg_len.tolist()):
        x = terms[t]
        if x is not None:
            per_tensor[t] = per_tensor[t] + _segment_total(x[a:a + n])
    total = 0.0
    for x in per_tensor:
        total = total + x
    return total


class _ProdigyTwinBackend(ReferenceBackend):
    """Pass 1 of a group in NumPy, on the optimizer's own buffers (float32/float64)."""

    def apply(self, opt: Any, gi: int, plan: _kernels.Plan, cache: Any,
              grads: list[FloatArray | None], fresh: Any, inv_scale: float | None) -> None:
        active = [t for t, g in enumerate(grads) if g is not None]
        if not active:
            return
        for t in active:
            plan.steps_array[t] += 1
        if inv_scale is not None:
            grads = [None if g is None else g * g.dtype.type(inv_scale) for g in grads]
        opt._twin_stats(gi, plan, cache.hyper, grads)


class Prodigy(_optim_prodigy.Prodigy):
    """NumPy reference twin of :class:`fusedoptim.Prodigy`: the same step, its two passes
    in NumPy, its sums folded over the same driver segments (bitwise the fused step)."""

    _backend = _ProdigyTwinBackend(prodigy)    # type: ignore[assignment]

    def _buffers(self, gi: int, t: int) -> list[FloatArray]:
        st = self._state[self._group_slices[gi].start + t]
        assert st is not None
        return [st[name] for name in self._slots]

    def _twin_stats(self, gi: int, plan: _kernels.Plan, hyper: Any,
                    grads: list[FloatArray | None]) -> None:
        st = self._step_state
        assert st is not None
        st.pending.append((plan, hyper, (gi, grads)))
        params = self.param_groups[gi]["params"]
        num: list[NDArray[np.float64] | None] = [None] * len(params)
        den: list[NDArray[np.float64] | None] = [None] * len(params)
        for t, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            m, v, s, p0 = self._buffers(gi, t)
            if plan.steps_array[t] == 1:
                p0[...] = p
            if hyper.lr > 0:
                a, b = _prodigy_pass1(p, g, m, v, s, p0, st, hyper)
                num[t], den[t] = a.reshape(-1), b.reshape(-1)
        if hyper.lr > 0:
            st.numerator += st.coef(hyper) * _plan_total(plan, num)
            st.denom += _plan_total(plan, den)

    def _apply(self, plan: _kernels.Plan, hyper: Any, st: Any, d_new: float,
               extra: Any) -> None:
        gi, grads = extra
        for t, (p, g) in enumerate(zip(self.param_groups[gi]["params"], grads)):
            if g is not None:
                m, v, _, _ = self._buffers(gi, t)
                _prodigy_pass2(p, g, m, v, st, hyper, d_new)
