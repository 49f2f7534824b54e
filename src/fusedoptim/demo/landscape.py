"""``fusedoptim landscape``: optimizer paths on 2-D test functions, the picture the notes draw.

Each optimizer is the public ``fusedoptim`` class, stepping a 2-element array in place with the
function's analytic gradient; there is no special path for two dimensions.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from . import DEFAULT_OPTIMIZERS, OPTIMIZERS, DemoError, optimizer_class, require

# A path that leaves this radius is treated as diverged; it keeps float overflow out of the plot.
_ESCAPE_RADIUS = 1e6
_GIF_DPI = 70  # keeps an 80-frame GIF of four panels at a few MB
_GRID = 200  # contour grid resolution per axis


@dataclass(frozen=True)
class TestFunction:
    """A 2-D objective with its gradient, a default start, view window and per-optimizer rates."""

    name: str
    formula: str
    f: object  # f(x, y) -> value; vectorised over arrays for the contour plot
    grad: object  # grad(x, y) -> (df/dx, df/dy)
    start: tuple
    minima: tuple  # global minima (or the saddle's neighbouring minima) for the distance column
    xlim: tuple
    ylim: tuple
    steps: int
    lrs: dict = field(default_factory=dict)
    log_levels: bool = False  # log-spaced contours for functions whose floor is a narrow curve

    __test__ = False  # not a pytest test class despite the name


# ------------------------------------------------------------------------------ functions
def _valley(x, y):
    return 0.1 * x * x + 2.0 * y * y


def _valley_grad(x, y):
    return 0.2 * x, 4.0 * y


def _rosenbrock(x, y):
    return (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2


def _rosenbrock_grad(x, y):
    return -2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)


def _beale(x, y):
    return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y * y) ** 2
            + (2.625 - x + x * y ** 3) ** 2)


def _beale_grad(x, y):
    a = 1.5 - x + x * y
    b = 2.25 - x + x * y * y
    c = 2.625 - x + x * y ** 3
    dx = 2.0 * a * (y - 1.0) + 2.0 * b * (y * y - 1.0) + 2.0 * c * (y ** 3 - 1.0)
    dy = 2.0 * a * x + 2.0 * b * 2.0 * x * y + 2.0 * c * 3.0 * x * y * y
    return dx, dy


def _saddle(x, y):
    return x * x + 0.25 * y ** 4 - 0.5 * y * y


def _saddle_grad(x, y):
    return 2.0 * x, y ** 3 - y


# Per-function learning rates: a good step size depends on the curvature, so each function has
# its own row. Chosen from sweeps so each optimizer's character shows (SGD zig-zags across the
# valley, momentum overshoots, adaptive methods leave the saddle quickly) rather than to win, and
# so that none diverges with the default start and steps (RAdam's first un-adapted steps are
# plain momentum SGD, hence its small rates on Rosenbrock and Beale). Rows other than the Adam
# family were first swept with torch.optim's implementations of the same rules, which the fused
# classes reproduce (tests/test_optimizers.py); the pictures in docs/ come from the fused classes.
FUNCTIONS: dict[str, TestFunction] = {
    "valley": TestFunction(
        "valley", "f = 0.1 x\u00b2 + 2 y\u00b2 (condition number 20)", _valley, _valley_grad,
        start=(-4.5, 1.4), minima=((0.0, 0.0),), xlim=(-5.0, 1.5), ylim=(-1.6, 1.6), steps=60,
        lrs={"sgd": 0.45, "momentum": 0.05, "nesterov": 0.05, "adagrad": 1.0, "rmsprop": 0.05,
             "adadelta": 20.0, "adam": 0.2, "adamw": 0.2, "amsgrad": 0.2, "adamax": 0.3,
             "nadam": 0.2, "radam": 0.5, "lion": 0.2}),
    "rosenbrock": TestFunction(
        "rosenbrock", "f = (1 - x)\u00b2 + 100 (y - x\u00b2)\u00b2", _rosenbrock, _rosenbrock_grad,
        start=(-1.5, 2.0), minima=((1.0, 1.0),), xlim=(-2.0, 2.0), ylim=(-1.0, 3.0), steps=600,
        lrs={"sgd": 1e-3, "momentum": 5e-4, "nesterov": 5e-4, "adagrad": 0.5, "rmsprop": 0.01,
             "adadelta": 1.0, "adam": 0.05, "adamw": 0.05, "amsgrad": 0.05, "adamax": 0.2,
             "nadam": 0.02, "radam": 3e-3, "lion": 0.01},
        log_levels=True),
    "beale": TestFunction(
        "beale",
        "f = (1.5 - x + xy)\u00b2 + (2.25 - x + xy\u00b2)\u00b2 + (2.625 - x + xy\u00b3)\u00b2",
        _beale, _beale_grad, start=(1.0, 1.4), minima=((3.0, 0.5),), xlim=(-1.0, 4.5),
        ylim=(-1.5, 2.0), steps=500,
        lrs={"sgd": 0.01, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 0.5, "rmsprop": 0.01,
             "adadelta": 2.0, "adam": 0.05, "adamw": 0.05, "amsgrad": 0.05, "adamax": 0.2,
             "nadam": 0.05, "radam": 0.01, "lion": 0.05},
        log_levels=True),
    "saddle": TestFunction(
        "saddle", "f = x\u00b2 + y\u2074/4 - y\u00b2/2 (saddle at 0, minima at y = \u00b11)",
        _saddle, _saddle_grad, start=(-1.5, 1e-3), minima=((0.0, 1.0), (0.0, -1.0)),
        xlim=(-1.8, 1.8), ylim=(-1.5, 1.5), steps=150,
        lrs={"sgd": 0.05, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.1, "rmsprop": 0.01,
             "adadelta": 5.0, "adam": 0.05, "adamw": 0.05, "amsgrad": 0.05, "adamax": 0.05,
             "nadam": 0.05, "radam": 0.1, "lion": 0.01}),
}


def parse_functions(text):
    if text is None or text.strip().lower() == "all":
        return list(FUNCTIONS)
    names = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in FUNCTIONS:
            raise DemoError(f"unknown function {raw.strip()!r}; "
                            f"choose from: {', '.join(FUNCTIONS)} (or all)")
        if name not in names:
            names.append(name)
    if not names:
        raise DemoError("--function is empty; give e.g. rosenbrock or valley,saddle")
    return names


def parse_point(text):
    """``"x,y"`` -> (x, y) as floats; a negative x needs ``--start=-1,2`` on the command line."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        raise DemoError(f"--start must be two numbers 'x,y', got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise DemoError(f"--start must be finite, got {text!r}")
    return x, y


# ------------------------------------------------------------------------------ running
def run_path(cls, kwargs, lr, fn: TestFunction, start, steps, dtype=np.float64):
    """Step one optimizer on ``fn``; return (path of shape (k+1, 2), diverged flag)."""
    xy = np.array(start, dtype=dtype)
    grad = np.empty(2, dtype=dtype)
    opt = cls({"xy": xy}, lr=lr, **kwargs)
    path = np.empty((steps + 1, 2))
    path[0] = xy
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            grad[:] = fn.grad(xy[0], xy[1])
            opt.step({"xy": grad})
            path[t] = xy
            if not np.all(np.isfinite(xy)) or np.hypot(*xy) > _ESCAPE_RADIUS:
                return path[: t + 1], True
    return path, False


@dataclass
class LandscapeConfig:
    functions: list = field(default_factory=lambda: list(FUNCTIONS))
    optimizers: list = field(default_factory=lambda: list(DEFAULT_OPTIMIZERS))
    explicit: bool = False
    start: tuple | None = None
    steps: int | None = None
    lr: float | None = None
    lr_per: dict = field(default_factory=dict)
    out: str | None = "landscape.png"
    animate: str | None = None
    frames: int = 80


def run_landscape(cfg: LandscapeConfig, out=None, err=None):
    """Run every (function, optimizer) pair, print a table, write the PNG and optional GIF."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if cfg.steps is not None and cfg.steps <= 0:
        raise DemoError(f"--steps must be a positive integer, got {cfg.steps}")
    if cfg.animate and not cfg.animate.lower().endswith(".gif"):
        raise DemoError(f"--animate writes a GIF; give a path ending in .gif, got {cfg.animate!r}")
    for path, what in ((cfg.out, "--out"), (cfg.animate, "--animate")):
        if path:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise DemoError(f"{what}: directory does not exist: {parent}")
    if cfg.out or cfg.animate:
        require("matplotlib", "the landscape picture (or pass --no-plot for the table only)")
    if cfg.animate:
        require("PIL.Image", "--animate (Pillow, which matplotlib installs)")

    runnable, skipped = [], []
    for name in cfg.optimizers:
        try:
            runnable.append((name, optimizer_class(name)))
        except DemoError:
            if cfg.explicit:
                raise
            skipped.append(name)
    if not runnable:
        raise DemoError(f"none of the requested optimizers is available in this build "
                        f"(missing: {', '.join(skipped)})")
    if skipped:
        print(f"skipping (not available in this build): {', '.join(skipped)}", file=err)

    results = {}
    for fname in cfg.functions:
        fn = FUNCTIONS[fname]
        start = cfg.start if cfg.start is not None else fn.start
        steps = cfg.steps if cfg.steps is not None else fn.steps
        results[fname] = {}
        for name, cls in runnable:
            spec = OPTIMIZERS[name]
            lr = cfg.lr_per.get(name, cfg.lr if cfg.lr is not None else fn.lrs.get(name))
            if lr is None:   # no learning rate tuned for this function (beyond the notes' set)
                if cfg.explicit:
                    raise DemoError(f"landscape has no tuned learning rate for {name} on "
                                    f"{fname}; give one with --lr {name}=VALUE")
                print(f"skipping {name} on {fname} (no tuned learning rate; name it with "
                      f"--lr {name}=VALUE)", file=err)
                continue
            path, diverged = run_path(cls, spec.kwargs, lr, fn, start, steps)
            x, y = path[-1]
            with np.errstate(all="ignore"):   # a diverged end point may overflow f: report inf
                f_end = float(fn.f(x, y))
            results[fname][name] = {
                "lr": lr, "path": path, "diverged": diverged, "steps": len(path) - 1,
                "final": (float(x), float(y)), "f": f_end,
                "distance": min(math.hypot(x - mx, y - my) for mx, my in fn.minima),
            }
    print(format_table(results), file=out)
    if cfg.out:
        plot_landscape(results, cfg.out)
        print(f"wrote {cfg.out}", file=out)
    if cfg.animate:
        animate_landscape(results, cfg.animate, cfg.frames)
        print(f"wrote {cfg.animate}", file=out)
    return results


def format_table(results):
    lines = []
    for fname, runs in results.items():
        fn = FUNCTIONS[fname]
        lines.append(f"{fname}: {fn.formula}")
        lines.append(f"  {'optimizer':<9}  {'lr':>7}  {'steps':>5}  {'final (x, y)':>22}  "
                     f"{'f':>10}  {'to min':>8}")
        for name, r in runs.items():
            x, y = r["final"]
            note = "  diverged" if r["diverged"] else ""
            lines.append(f"  {name:<9}  {r['lr']:>7g}  {r['steps']:>5}  ({x:>9.4g}, {y:>9.4g})  "
                         f"{r['f']:>10.3g}  {r['distance']:>8.3g}{note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ drawing
def _figure(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    n = len(results)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.2 * cols + 1.6, 5.0 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    lines = {}
    tracks = []  # (path line, end marker, path) for the animation
    for ax, (fname, runs) in zip(axes, results.items()):
        fn = FUNCTIONS[fname]
        gx = np.linspace(*fn.xlim, _GRID)
        gy = np.linspace(*fn.ylim, _GRID)
        X, Y = np.meshgrid(gx, gy)
        Z = fn.f(X, Y)
        if fn.log_levels:
            zmin = max(Z.min(), 1e-3)
            levels = np.logspace(np.log10(zmin), np.log10(Z.max()), 25)
            Z = np.maximum(Z, zmin)
            kw = {"levels": levels, "norm": LogNorm()}
        else:
            kw = {"levels": 25}
        # Pale grey background so the coloured paths carry the picture.
        ax.contourf(X, Y, Z, cmap="Greys", alpha=0.3, **kw)
        ax.contour(X, Y, Z, colors="0.55", linewidths=0.4, **kw)
        for mx, my in fn.minima:
            ax.plot(mx, my, marker="*", ms=14, color="gold", mec="black", zorder=5)
        for name, r in runs.items():
            color = OPTIMIZERS[name].color
            (line,) = ax.plot(r["path"][:, 0], r["path"][:, 1], color=color, lw=1.5, label=name,
                              marker="o", ms=1.8)
            lines[name] = line
            (end,) = ax.plot(*r["path"][-1], marker="o", ms=5, color=color, mec="black", mew=0.5,
                             zorder=4)
            tracks.append((line, end, r["path"]))
        first = next(iter(runs.values()))["path"][0]
        ax.plot(*first, marker="s", ms=7, color="white", mec="black", zorder=6)
        ax.set(xlim=fn.xlim, ylim=fn.ylim, xlabel="x", ylabel="y",
               title=f"{fname}: {fn.formula}\nstart ({first[0]:g}, {first[1]:g}), "
                     f"{max(r['steps'] for r in runs.values())} steps")
        ax.title.set_fontsize(9)
    for ax in axes[len(results):]:
        ax.set_visible(False)
    fig.legend(handles=list(lines.values()), loc="outside right center", fontsize=9,
               title="optimizer")
    fig.suptitle("fusedoptim optimizers on 2-D test functions (square: start, star: minimum, "
                 "dot: end)")
    return fig, tracks


def plot_landscape(results, path):
    fig, _ = _figure(results)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise DemoError(f"cannot write {path}: {exc.strerror or exc}") from None


def animate_landscape(results, path, frames=80):
    """A GIF in which every path grows step by step.

    The contours are drawn once and kept as a background; each frame only redraws the paths
    (blitting), then Pillow (a matplotlib dependency) writes the GIF. This is what matplotlib's
    PillowWriter does, without its full redraw of the figure on every frame.
    """
    Image = require("PIL.Image", "--animate (Pillow, which matplotlib installs)")
    fig, tracks = _figure(results)
    fig.set_dpi(_GIF_DPI)
    canvas = fig.canvas
    for line, end, _ in tracks:  # the legend already holds its own copies of these lines
        line.set_visible(False)
        end.set_visible(False)
    canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout the background was drawn with
    background = canvas.copy_from_bbox(fig.bbox)
    for line, end, _ in tracks:
        line.set_visible(True)
        end.set_visible(True)

    n_frames = max(2, min(frames, max(len(p) for _, _, p in tracks)))
    images = []
    for i in range(n_frames):
        # Every path shows the same fraction of its steps, so paths of different lengths
        # (a diverged one) still start and finish together.
        frac = i / (n_frames - 1)
        canvas.restore_region(background)
        for line, end, p in tracks:
            k = int(round(frac * (len(p) - 1))) + 1
            line.set_data(p[:k, 0], p[:k, 1])
            end.set_data(p[k - 1:k, 0], p[k - 1:k, 1])
            line.axes.draw_artist(line)
            line.axes.draw_artist(end)
        width, height = canvas.get_width_height()
        rgba = np.asarray(canvas.buffer_rgba())
        images.append(Image.fromarray(rgba[:height, :width, :3].copy()))
    durations = [80] * (n_frames - 1) + [1500]  # hold the final picture before looping
    try:
        images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    except OSError as exc:
        raise DemoError(f"cannot write {path}: {exc.strerror or exc}") from None
