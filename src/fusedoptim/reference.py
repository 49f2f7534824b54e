"""Plain NumPy reference optimizers: the oracle for the tests and the baseline for benchmarks.

One formula per line, in the param's dtype, in the same order of operations as the fused
kernel (so float32 results agree to the last bit on a default build). Never on the fast path.

Each function has the signature of its twin in :mod:`fusedoptim.functional`. Each class has
the API of its twin in :mod:`fusedoptim` (same validation, state and checkpoints) but steps
through the function here, one tensor at a time.
"""

import math

import numpy as np

from . import optim
from .optim.adam import check_adam


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1,
         beta2, eps, weight_decay=0.0, amsgrad=False, maximize=False,
         decoupled_weight_decay=False, bias_correction=True):
    check_adam(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
               bias_correction)
    for i, p in enumerate(params):
        g = grads[i]
        if g is None:
            continue
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i]
        if maximize:
            g = -g
        p_decayed = p
        if weight_decay != 0 and not decoupled_weight_decay:
            g = g + weight_decay * p
        if weight_decay != 0 and decoupled_weight_decay:
            p_decayed = p * (1.0 - lr * weight_decay)
        m[...] = beta1 * m + (1.0 - beta1) * g
        v[...] = beta2 * v + (1.0 - beta2) * g * g
        if bias_correction:
            step_size = lr / (1.0 - beta1 ** t)
            inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** t)
        else:
            step_size, inv_bias_correction2_sqrt = lr, 1.0
        v_hat = v
        if amsgrad:
            np.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v_hat = max_exp_avg_sqs[i]
        denom = np.sqrt(v_hat) * inv_bias_correction2_sqrt + eps
        p[...] = p_decayed - step_size * m / denom


def adamw(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1,
          beta2, eps, weight_decay=1e-2, amsgrad=False, maximize=False, bias_correction=True):
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr=lr,
         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
         maximize=maximize, decoupled_weight_decay=True, bias_correction=bias_correction)


# -- classes ------------------------------------------------------------------------------------

class _ReferenceStep:
    """Mixin: step a fused optimizer class through its NumPy reference function instead."""

    _reference_fn = None

    def _apply(self, gi, plan, hyper, grads):
        active = [t for t, g in enumerate(grads) if g is not None]
        if not active:
            return
        start = self._group_slices[gi].start
        params = self.param_groups[gi]["params"]
        states = [self._state[start + t] for t in active]
        buffers = [[st.get(slot) for st in states] for slot in self._slots]
        # Per-tensor scalar state (e.g. mu_product) goes in as lists of floats, updated in place.
        scalars = [[float(plan.sstate_array[t, j]) for t in active]
                   for j in range(len(self._scalar_state))]
        steps = [int(plan.steps_array[t]) for t in active]
        type(self)._reference_fn([params[t] for t in active], [grads[t] for t in active],
                                 *buffers, *scalars, steps, **self._functional_kwargs(hyper))
        for t, s in zip(active, steps):
            plan.steps_array[t] = s
        for j, values in enumerate(scalars):
            for t, x in zip(active, values):
                plan.sstate_array[t, j] = x


class Adam(_ReferenceStep, optim.Adam):
    __doc__ = "NumPy reference twin of :class:`fusedoptim.Adam`."
    _reference_fn = staticmethod(adam)


class AdamW(_ReferenceStep, optim.AdamW):
    __doc__ = "NumPy reference twin of :class:`fusedoptim.AdamW`."
    _reference_fn = staticmethod(adam)
