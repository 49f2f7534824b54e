"""A small NumPy MLP with hand-written forward and backward passes.

No autograd: every derivative is written out, and ``tests/test_demo_mlp.py`` checks each one against
finite differences. Matrix products go through NumPy's BLAS. Parameters are a plain dict of
C-contiguous arrays (``W1, b1, W2, b2, ...``), which is exactly what the fused optimizers take.

Conventions (torch's, so numbers are comparable): every loss is a mean over the batch; MSE, MAE and
BCE also average over the output units, categorical cross-entropy sums over classes.

Low-precision params (``param_dtype`` float16 or bfloat16, ``fusedoptim compare --precision``):
the params are stored, and handed to the optimizer, in that dtype, and so are the grads the
optimizer receives. The forward and backward passes compute in ``dtype`` (float32): each step
widens every param once (``param.astype(float32)``, exact for both half types), and the
float32 grads are rounded to the param dtype at the end of the backward pass. That is the usual
mixed-precision split (half-precision weights and grads, float32 arithmetic), and it keeps
NumPy's BLAS in float32: NumPy has no bfloat16 matmul, and a float16 one is slow and would
round every partial sum. The optimizer keeps the float32 master copy of the weights.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu", "elu")
OUTPUTS = ("softmax", "sigmoid")
LOSSES = ("mse", "mae", "bce", "cce")

# Keeps log() finite in the two loss/output pairings that have no closed form on logits
# (BCE after softmax); far below anything a float32 probability near 0 or 1 can resolve.
_PROB_FLOOR = 1e-12


def _sigmoid(z):
    # tanh form: one ufunc, never overflows (1/(1+exp(-z)) warns for z < -88 in float32).
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def default_output(loss: str) -> str:
    """The output activation the notes pair with a loss: sigmoid for BCE, softmax otherwise."""
    return "sigmoid" if loss == "bce" else "softmax"


class MLP:
    """Fully connected network: ``sizes[0]`` inputs, hidden layers, ``sizes[-1]`` outputs.

    ``activation`` is used on every hidden layer, ``output`` on the last; ``elu_alpha`` is the
    alpha of the notes' alpha-ELU. ``dtype`` is the compute (and data) dtype; ``param_dtype``
    (default: ``dtype``) is the dtype the params and their grads are stored in, float16 or
    bfloat16 for low-precision training (see the module doc).
    """

    def __init__(self, sizes, activation="relu", output="softmax", loss="cce", elu_alpha=1.0,
                 dtype=np.float32, param_dtype=None):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least 2 positive widths, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.sizes = sizes
        self.activation = activation
        self.output = output
        self.loss_name = loss
        self.elu_alpha = float(elu_alpha)
        self.dtype = np.dtype(dtype)
        self.param_dtype = self.dtype if param_dtype is None else np.dtype(param_dtype)
        if self.param_dtype != self.dtype and self.dtype != np.float32:
            raise ValueError(f"{self.param_dtype} params compute in float32; dtype must be "
                             f"float32, got {self.dtype}")
        self.n_layers = len(sizes) - 1

    def __repr__(self):
        widths = "-".join(str(s) for s in self.sizes)
        return f"MLP({widths}, {self.activation}, {self.output} output, {self.loss_name} loss)"

    # ----------------------------------------------------------------------------- parameters
    def init_params(self, seed=0) -> dict[str, np.ndarray]:
        """Fresh weights: He-normal for ReLU/ELU, Glorot-uniform for sigmoid/tanh; zero biases.

        Drawn in float64 and rounded to ``param_dtype`` (through ``dtype``), so a bfloat16 model
        starts from the bfloat16 rounding of the float32 model's weights."""
        rng = np.random.default_rng(seed)
        params = {}
        for i in range(self.n_layers):
            fan_in, fan_out = self.sizes[i], self.sizes[i + 1]
            if self.activation in ("relu", "elu") and i < self.n_layers - 1:
                w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                w = rng.uniform(-limit, limit, size=(fan_in, fan_out))
            w = np.ascontiguousarray(w, dtype=self.dtype)
            params[f"W{i + 1}"] = w.astype(self.param_dtype, copy=False)
            params[f"b{i + 1}"] = np.zeros(fan_out, dtype=self.param_dtype)
        return params

    def n_params(self) -> int:
        return sum((self.sizes[i] + 1) * self.sizes[i + 1] for i in range(self.n_layers))

    # ----------------------------------------------------------------------------- forward
    def _act(self, z):
        a = self.activation
        if a == "relu":
            return np.maximum(z, 0.0, out=z)
        if a == "tanh":
            return np.tanh(z, out=z)
        if a == "sigmoid":
            return _sigmoid(z)
        # ELU: alpha*(exp(z)-1) for z < 0. expm1 of the clipped value avoids overflow warnings
        # for large positive z, where the branch is not used anyway.
        return np.where(z > 0, z, self.elu_alpha * np.expm1(np.minimum(z, 0.0)))

    def _act_grad(self, a):
        """Derivative of the hidden activation, written in terms of its output ``a``."""
        act = self.activation
        if act == "relu":
            return (a > 0).astype(a.dtype)
        if act == "tanh":
            return 1.0 - a * a
        if act == "sigmoid":
            return a * (1.0 - a)
        return np.where(a > 0, 1.0, a + self.elu_alpha).astype(a.dtype)  # alpha*e^z = a + alpha

    def _widen(self, params):
        """The params in the compute dtype: themselves, or float32 copies of half params."""
        if self.param_dtype == self.dtype:
            return params
        return {k: v.astype(self.dtype) for k, v in params.items()}

    def _forward(self, params, X):
        """Return the inputs of every layer (for backward) and the output logits.

        ``params`` are in the compute dtype (see :meth:`_widen`)."""
        inputs = [X]
        h = X
        for i in range(1, self.n_layers + 1):
            z = h @ params[f"W{i}"]
            z += params[f"b{i}"]
            if i == self.n_layers:
                return inputs, z
            h = self._act(z)
            inputs.append(h)
        raise AssertionError("unreachable")

    def _probs(self, z):
        if self.output == "softmax":
            logp = z - z.max(axis=1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
            return np.exp(logp), logp
        return _sigmoid(z), _log_sigmoid(z)

    def predict_proba(self, params, X):
        _, z = self._forward(self._widen(params), X)
        return self._probs(z)[0]

    # ----------------------------------------------------------------------------- loss
    def _loss_and_dz(self, z, Y):
        """Loss and its gradient with respect to the output logits ``z``."""
        n, k = z.shape
        p, logp = self._probs(z)
        loss_name, out = self.loss_name, self.output
        if loss_name == "mse":
            diff = p - Y
            loss = np.mean(diff * diff)
            dp = diff * (2.0 / (n * k))
        elif loss_name == "mae":
            diff = p - Y
            loss = np.mean(np.abs(diff))
            dp = np.sign(diff) * (1.0 / (n * k))
        elif loss_name == "bce":
            if out == "sigmoid":
                # log(1-p) = log_sigmoid(-z): exact on logits, no clipping needed.
                loss = -np.mean(Y * logp + (1.0 - Y) * _log_sigmoid(-z))
                return float(loss), (p - Y) * (1.0 / (n * k))
            pc = np.clip(p, _PROB_FLOOR, 1.0 - _PROB_FLOOR)
            loss = -np.mean(Y * np.log(pc) + (1.0 - Y) * np.log1p(-pc))
            dp = (pc - Y) / (pc * (1.0 - pc)) * (1.0 / (n * k))
        else:  # cce
            loss = -np.sum(Y * logp) / n + 0.0  # + 0.0 turns -0.0 into 0.0 for printing
            if out == "softmax":
                # d/dz of -sum_j y_j log softmax_j = p * sum(y) - y (= p - y for one-hot rows).
                return float(loss), (p * Y.sum(axis=1, keepdims=True) - Y) * (1.0 / n)
            return float(loss), -Y * (1.0 - p) * (1.0 / n)  # d/dz of -y*log(sigmoid(z))
        # Chain dL/dp through the output activation.
        if out == "softmax":
            dz = p * (dp - np.sum(dp * p, axis=1, keepdims=True))
        else:
            dz = dp * p * (1.0 - p)
        return float(loss), dz

    def loss(self, params, X, Y) -> float:
        _, z = self._forward(self._widen(params), X)
        return self._loss_and_dz(z, Y)[0]

    def loss_and_grad(self, params, X, Y):
        """Mean batch loss and a dict of gradients shaped, typed and keyed like ``params``.

        With half-precision params the backward pass runs in float32 and each grad is then
        rounded to the params' dtype (to nearest even: ``astype``)."""
        params = self._widen(params)
        inputs, z = self._forward(params, X)
        loss, dz = self._loss_and_dz(z, Y)
        dz = dz.astype(self.dtype, copy=False)
        grads = {}
        for i in range(self.n_layers, 0, -1):
            h = inputs[i - 1]
            grads[f"W{i}"] = h.T @ dz  # matmul returns a fresh C-contiguous array
            grads[f"b{i}"] = dz.sum(axis=0)
            if i > 1:
                dz = (dz @ params[f"W{i}"].T) * self._act_grad(h)
        if self.param_dtype != self.dtype:
            grads = {k: g.astype(self.param_dtype) for k, g in grads.items()}
        return loss, grads

    def evaluate(self, params, X, Y, labels):
        """(mean loss, accuracy) on a whole split; accuracy compares argmax with integer labels."""
        _, z = self._forward(self._widen(params), X)
        loss = self._loss_and_dz(z, Y)[0]
        acc = float(np.mean(np.argmax(z, axis=1) == labels))
        return loss, acc
