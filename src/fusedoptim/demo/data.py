"""Datasets for ``fusedoptim compare``: digits, generated spirals, or the user's own ``.npz``.

Every loader returns a :class:`Dataset` whose train/validation split and feature scaling are fixed
by the seed, so two runs with the same ``--seed`` see exactly the same batches.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from . import DemoError, require

DATASETS = ("digits", "spirals")
DIGITS_NEEDS = ("sklearn.datasets", "the digits dataset (the default; or use --dataset spirals)")


@dataclass
class Dataset:
    """Standardised features, one-hot (or user-given) targets and integer labels for accuracy."""

    name: str
    X_train: np.ndarray
    Y_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    Y_val: np.ndarray
    y_val: np.ndarray

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.Y_train.shape[1]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.X_train)} train / {len(self.X_val)} validation samples, "
                f"{self.n_features} features, {self.n_outputs} outputs")


def make_spirals(n_per_class=300, n_classes=3, noise=0.2, seed=0):
    """Interleaved spiral arms (the classic CS231n toy set): not linearly separable, NumPy only."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(n_classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        t = np.linspace(k * 4.0, (k + 1) * 4.0, n_per_class) + rng.normal(0.0, noise, n_per_class)
        X.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        y.append(np.full(n_per_class, k))
    return np.concatenate(X), np.concatenate(y)


def load_digits_arrays():
    """scikit-learn's 8x8 handwritten digits: shipped inside scikit-learn, nothing downloads."""
    datasets = require(*DIGITS_NEEDS)
    bunch = datasets.load_digits()
    return bunch.data, bunch.target


def load_npz(path):
    """Read ``X`` (samples first) and ``y`` (labels, or an (N, K) target matrix) from an .npz file.

    Every way the file can be wrong becomes a one-line :class:`DemoError`.
    """
    if not os.path.exists(path):
        raise DemoError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise DemoError(f"data file is a directory: {path}")
    not_npz = f"{path} is not an .npz archive (save one with np.savez(path, X=X, y=y))"
    try:
        # .npz is a zip archive; checking first gives a clear message for .npy, text or pickles
        # instead of np.load's "cannot load pickled data".
        if not zipfile.is_zipfile(path):
            raise DemoError(not_npz)
        archive = np.load(path, allow_pickle=False)
        with archive:
            missing = [key for key in ("X", "y") if key not in archive.files]
            if missing:
                found = ", ".join(archive.files) or "nothing"
                raise DemoError(f"{path} has no array {missing[0]!r} (found: {found}); "
                                "expected arrays X and y")
            X, y = archive["X"], archive["y"]
    except DemoError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # Unreadable files, corrupt members and object arrays (pickles are refused) land here.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DemoError(f"cannot read {path} as .npz: {reason}") from None
    return check_arrays(X, y, source=path)


def check_arrays(X, y, source="data"):
    """Validate user arrays; return (N, D) float features and (N,) labels or (N, K) targets."""
    X, y = np.asarray(X), np.asarray(y)
    if X.dtype.kind not in "biuf":
        raise DemoError(f"{source}: X must be numeric, got dtype {X.dtype}")
    if X.ndim == 0 or y.ndim == 0:
        raise DemoError(f"{source}: X and y must be arrays with one row per sample, not scalars")
    if len(X) != len(y):
        raise DemoError(f"{source}: X has {len(X)} samples but y has {len(y)}; they must match")
    if len(X) < 2:
        raise DemoError(f"{source}: need at least 2 samples, got {len(X)}")
    X = X.reshape(len(X), -1).astype(np.float64)  # images (N, h, w) become (N, h*w)
    if X.shape[1] == 0:
        raise DemoError(f"{source}: X has no features")
    if not np.all(np.isfinite(X)):
        raise DemoError(f"{source}: X contains NaN or infinity")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        if y.dtype.kind not in "biufUS":
            raise DemoError(f"{source}: y must hold class labels (integers or strings), "
                            f"got dtype {y.dtype}")
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise DemoError(f"{source}: y contains NaN or infinity")
        if y.dtype.kind == "f" and not np.all(y == np.round(y)):
            raise DemoError(f"{source}: y must hold class labels (integers or strings), or be an "
                            "(N, K) target matrix; got non-integer floats")
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise DemoError(f"{source}: y has only one class ({classes[0]!r}); need at least 2")
        return X, labels.reshape(-1)
    if y.ndim == 2:
        if y.dtype.kind not in "biuf":
            raise DemoError(f"{source}: y as an (N, K) target matrix must be numeric, "
                            f"got {y.dtype}")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise DemoError(f"{source}: y contains NaN or infinity")
        return X, y
    raise DemoError(f"{source}: y must be 1-D labels or an (N, K) target matrix, "
                    f"got shape {y.shape}")


def split_and_scale(name, X, y, val_frac=0.2, seed=0, dtype=np.float32) -> Dataset:
    """Shuffle with ``seed``, hold out ``val_frac``, standardise with the train statistics."""
    n = len(X)
    n_val = int(round(n * val_frac))
    n_val = min(max(n_val, 1), n - 1)  # at least one sample on each side
    order = np.random.default_rng(seed).permutation(n)
    tr, va = order[n_val:], order[:n_val]
    mean = X[tr].mean(axis=0)
    std = X[tr].std(axis=0)
    std[std < 1e-8] = 1.0  # constant features (digits' blank border pixels) stay at zero
    Xs = (X - mean) / std
    if y.ndim == 1:
        labels = y.astype(np.int64)
        Y = np.eye(int(labels.max()) + 1)[labels]
    else:
        Y = y
        labels = np.argmax(y, axis=1)

    def arr(a):
        return np.ascontiguousarray(a, dtype=dtype)

    return Dataset(name, arr(Xs[tr]), arr(Y[tr]), labels[tr], arr(Xs[va]), arr(Y[va]), labels[va])


def load_dataset(name="digits", path=None, val_frac=0.2, seed=0, dtype=np.float32) -> Dataset:
    """Resolve ``--dataset``/``--data`` into a :class:`Dataset` (``path`` wins over ``name``)."""
    if not 0.0 < val_frac < 1.0:
        raise DemoError(f"--val-frac must be between 0 and 1 (exclusive), got {val_frac}")
    if path is not None:
        X, y = load_npz(path)
        name = os.path.basename(path)
    elif name == "digits":
        X, y = load_digits_arrays()
    elif name == "spirals":
        X, y = make_spirals(seed=seed)
    else:
        raise DemoError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)} "
                        "(or --data file.npz)")
    return split_and_scale(name, X, y, val_frac=val_frac, seed=seed, dtype=dtype)
