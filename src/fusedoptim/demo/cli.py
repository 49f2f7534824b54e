"""Argument parsing for ``fusedoptim compare`` and ``fusedoptim landscape``.

The package's ``__main__`` mounts both commands on its own parser::

    from fusedoptim.demo.cli import add_compare_parser, add_landscape_parser
    add_compare_parser(subparsers)
    add_landscape_parser(subparsers)
    ...
    return args.func(args)          # every handler returns an exit status

:func:`main` runs just these two commands (``python -m fusedoptim.demo.cli``).

Bad input never shows a traceback: argparse errors and :class:`~fusedoptim.demo.DemoError`
both become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .._cli import EXIT_USAGE
from .._cli import one_line_errors as _one_line_errors
from . import (DEFAULT_OPTIMIZERS, OPTIMIZERS, DemoError, parse_lr_overrides,
               parse_optimizer_names)
_DEBUG_ENV = "FUSEDOPTIM_DEBUG"  # set to 1 to get the traceback of an unexpected error


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonneg_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a number between 0 and 1 (exclusive), got {text!r}")
    return value


def _widths(text):
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        widths = ()
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated positive layer widths such as 64 or 128,64, got {text!r}")
    return widths


def _finite_positive(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _guarded(command, handler):
    """Wrap a handler so that every failure is one line on stderr and an exit status."""

    def run(args):
        try:
            return handler(args)
        except DemoError as exc:
            print(f"fusedoptim {command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"fusedoptim {command}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # a bug, not bad input: still one line unless asked for more
            if os.environ.get(_DEBUG_ENV):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"fusedoptim {command}: internal error: {type(exc).__name__}: {first} "
                  f"(set {_DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
            return 1

    return run


_OPT_HELP = ("comma-separated optimizers, or all (default: the lecture notes' set, "
             + ",".join(DEFAULT_OPTIMIZERS) + "); all: " + ",".join(OPTIMIZERS))
_LR_HELP = ("learning rate: one number for every optimizer, or per optimizer as adam=0.01,sgd=0.1 "
            "(default: the table in fusedoptim.demo)")


# ------------------------------------------------------------------------------------ compare
def add_compare_parser(subparsers):
    """Add ``compare`` to an argparse subparsers object; the handler is ``args.func``."""
    from .compare import PRECISIONS, SCHEDULES, STATE_DTYPES
    from .data import DATASETS
    from .mlp import ACTIVATIONS, LOSSES, OUTPUTS

    p = subparsers.add_parser(
        "compare",
        help="train the same MLP with each optimizer and compare curves and step times",
        description="Train the same small NumPy MLP on the same data and mini-batches once per "
                    "optimizer; only the optimizer changes. Prints a table (final train loss, "
                    "validation accuracy, wall time, time inside step()), and writes a PNG of the "
                    "curves and optionally a JSON of every number.")
    _one_line_errors(p)
    g = p.add_argument_group("optimizers")
    g.add_argument("--optimizers", default=None, metavar="LIST", help=_OPT_HELP)
    g.add_argument("--lr", default=None, metavar="LR", help=_LR_HELP)
    g.add_argument("--schedule", default="cosine", choices=list(SCHEDULES),
                   help="learning-rate schedule, applied per step (default: cosine)")
    g.add_argument("--reference", action="store_true",
                   help="also run the NumPy reference optimizer in lockstep; report its step time, "
                        "the speed-up, and whether the trajectories agree")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="also keep an exponential moving average of the weights with this "
                        "decay (fusedoptim.swa_utils.AveragedParams, updated after every "
                        "step) and report its validation accuracy")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=list(DATASETS),
                   help="built-in dataset (default: digits, from scikit-learn; spirals needs "
                        "nothing extra)")
    g.add_argument("--data", default=None, metavar="FILE.npz",
                   help="your own data: an .npz with X (samples x features) and y (labels, or "
                        "an N x K target matrix); overrides --dataset")
    g.add_argument("--val-frac", type=_fraction, default=0.2, metavar="F",
                   help="fraction held out for validation (default: 0.2)")
    g.add_argument("--seed", type=_nonneg_int, default=0,
                   help="fixes the split, the initial weights and the batch order (default: 0)")
    g = p.add_argument_group("model and training")
    g.add_argument("--epochs", type=_positive_int, default=20,
                   help="epochs per optimizer (default: 20)")
    g.add_argument("--batch-size", type=_positive_int, default=64,
                   help="mini-batch size (default: 64)")
    g.add_argument("--hidden", type=_widths, default=(64,), metavar="WIDTHS",
                   help="hidden layer widths, e.g. 64 or 128,64 (default: 64)")
    g.add_argument("--activation", default="relu", choices=list(ACTIVATIONS),
                   help="hidden activation (default: relu)")
    g.add_argument("--elu-alpha", type=_finite_positive, default=1.0, metavar="A",
                   help="alpha of the ELU activation (default: 1.0)")
    g.add_argument("--output", default=None, choices=list(OUTPUTS),
                   help="output activation (default: sigmoid for --loss bce, softmax otherwise)")
    g.add_argument("--loss", default="cce", choices=list(LOSSES),
                   help="loss: mse, mae, bce (binary cross-entropy), cce (categorical "
                        "cross-entropy; default)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="parameter and data precision (default: float32)")
    g = p.add_argument_group("low precision")
    g.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="params and the grads handed to the optimizer in float32, bfloat16 or "
                        "float16; half params get float32 master weights in the optimizer and "
                        "the MLP computes in float32 (default: params in --dtype)")
    g.add_argument("--state-dtype", default=None, choices=list(STATE_DTYPES),
                   help="optimizer state dtype, passed to every optimizer as state_dtype; "
                        "optimizers that do not support it are skipped with a note, or are an "
                        "error when named with --optimizers (default: the library's: the "
                        "params' dtype, float32 under master weights)")
    g.add_argument("--min-quantized-size", type=_nonneg_int, default=None, metavar="N",
                   help="int8/int4 state: tensors with fewer elements keep float32 state "
                        "(default: the library's, 4096; the digits MLP's 64x64 W1 is its only "
                        "tensor that large)")
    g = p.add_argument_group("output")
    g.add_argument("--plot", default="compare.png", metavar="OUT.png",
                   help="PNG of loss and accuracy curves (default: compare.png)")
    g.add_argument("--no-plot", action="store_true",
                   help="do not write the PNG (no matplotlib needed)")
    g.add_argument("--json", default=None, metavar="OUT.json",
                   help="write every number to this JSON file")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("data-parallel (under mpirun; needs the mpi extra)")
    g.add_argument("--distributed", action="store_true",
                   help="run data-parallel over the MPI ranks (mpirun -n N fusedoptim compare "
                        "--distributed): each rank takes its slice of every mini-batch, the "
                        "grads are averaged with fusedoptim.distributed.allreduce_; rank 0 "
                        "prints the table and writes the plot")
    g.add_argument("--zero", type=int, default=0, choices=[1, 2],
                   help="with --distributed: average the grads and shard the optimizer state "
                        "with ZeroRedundancyOptimizer at this stage instead")
    p.set_defaults(func=_guarded("compare", _compare))
    return p


def _compare(args):
    from .compare import CompareConfig, run_compare

    names, explicit = parse_optimizer_names(args.optimizers)
    lr, lr_per = parse_lr_overrides(args.lr)
    cfg = CompareConfig(
        optimizers=names, explicit=explicit, epochs=args.epochs, batch_size=args.batch_size,
        schedule=args.schedule, lr=lr, lr_per=lr_per, dataset=args.dataset, data_path=args.data,
        val_frac=args.val_frac, seed=args.seed, hidden=args.hidden, activation=args.activation,
        output=args.output, loss=args.loss, elu_alpha=args.elu_alpha, dtype=args.dtype,
        precision=args.precision, state_dtype=args.state_dtype,
        min_quantized_size=args.min_quantized_size,
        reference=args.reference, ema=args.ema, plot=None if args.no_plot else args.plot, json=args.json,
        progress=not args.quiet, distributed=args.distributed, zero=args.zero)
    run_compare(cfg)
    return 0


# ------------------------------------------------------------------------------------ landscape
def add_landscape_parser(subparsers):
    """Add ``landscape`` to an argparse subparsers object; the handler is ``args.func``."""
    from .landscape import FUNCTIONS

    p = subparsers.add_parser(
        "landscape",
        help="draw optimizer paths on 2-D test functions (valley, Rosenbrock, Beale, saddle)",
        description="Run each optimizer on 2-D test functions with the same public fusedoptim "
                    "classes (on 2-element arrays) and draw the paths over the contours.")
    _one_line_errors(p)
    p.add_argument("--function", default="all", metavar="LIST",
                   help="comma-separated functions (default: all): " + ",".join(FUNCTIONS))
    p.add_argument("--optimizers", default=None, metavar="LIST", help=_OPT_HELP)
    p.add_argument("--start", default=None, metavar="X,Y",
                   help="start point for every function, e.g. --start=-1,2 (default: per function)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="steps per optimizer (default: per function)")
    p.add_argument("--lr", default=None, metavar="LR",
                   help="learning rate: one number for every optimizer, or adam=0.1,sgd=0.001 "
                        "(default: tuned per function)")
    p.add_argument("--out", default="landscape.png", metavar="OUT.png",
                   help="PNG of contours and paths (default: landscape.png)")
    p.add_argument("--no-plot", action="store_true",
                   help="print the table only (no matplotlib needed)")
    p.add_argument("--animate", default=None, metavar="OUT.gif",
                   help="also write an animated GIF of the paths (matplotlib + pillow)")
    p.add_argument("--frames", type=_positive_int, default=80,
                   help="frames in the GIF (default: 80)")
    p.set_defaults(func=_guarded("landscape", _landscape))
    return p


def _landscape(args):
    from .landscape import LandscapeConfig, parse_functions, parse_point, run_landscape

    names, explicit = parse_optimizer_names(args.optimizers)
    lr, lr_per = parse_lr_overrides(args.lr)
    cfg = LandscapeConfig(
        functions=parse_functions(args.function), optimizers=names, explicit=explicit,
        start=parse_point(args.start) if args.start is not None else None, steps=args.steps,
        lr=lr, lr_per=lr_per, out=None if args.no_plot else args.out, animate=args.animate,
        frames=args.frames)
    if args.no_plot and args.animate:
        raise DemoError("--animate draws a picture; drop --no-plot to use it")
    run_landscape(cfg)
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser(prog="fusedoptim"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    _one_line_errors(parser)
    sub = parser.add_subparsers(dest="command", metavar="{compare,landscape}", required=True)
    add_compare_parser(sub)
    add_landscape_parser(sub)
    return parser


def main(argv=None):
    """Run ``compare`` or ``landscape`` alone; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and argparse errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
