"""Plot every schedule in fusedoptim.schedules into one figure (docs/schedules.png).

    python examples/plot_schedules.py [--output PATH] [--steps N]

Needs matplotlib (``pip install matplotlib``, or ``pip install "fusedoptim[demo]"``).
"""

import argparse
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "schedules.png"


def panels(S, n):
    """(title, [(label, schedule)], draw-style) for each panel; n is the step count."""
    lr = 0.1
    steps = "steps-post"  # piecewise-constant schedules are drawn as stairs
    return [
        ("constant", [("", S.constant(lr))], steps),
        ("step_decay", [("x0.5 every 50", S.step_decay(lr, 50, 0.5))], steps),
        ("multistep_decay", [("x0.1 at 100, 200, 250", S.multistep_decay(lr, [100, 200, 250]))],
         steps),
        ("exponential_decay", [("gamma=0.99", S.exponential_decay(lr, 0.99)),
                               ("x0.9 every 40, staircase",
                                S.exponential_decay(lr, 0.9, 40, True))],
         None),
        ("cosine_decay", [("floor 0", S.cosine_decay(lr, n)),
                          ("floor 0.02, 200 steps", S.cosine_decay(lr, 200, 0.02))], None),
        ("linear_decay", [("to 0", S.linear_decay(lr, n)),
                          ("to 0.02 in 200", S.linear_decay(lr, 200, 0.02))], None),
        ("polynomial_decay", [("power 2", S.polynomial_decay(lr, n, power=2.0)),
                              ("power 0.5", S.polynomial_decay(lr, n, power=0.5))], None),
        ("inverse_sqrt", [("timescale 1", S.inverse_sqrt(lr)),
                          ("timescale 20", S.inverse_sqrt(lr, 20.0))], None),
        ("inverse_time_decay", [("delta 0.05", S.inverse_time_decay(lr, 0.05)),
                                ("delta 0.01", S.inverse_time_decay(lr, 0.01))], None),
        ("piecewise_constant", [("", S.piecewise_constant([60, 150, 220],
                                                          [0.1, 0.05, 0.08, 0.01]))], steps),
        ("linear_warmup", [("from 0, 100 steps", S.linear_warmup(lr, 100)),
                           ("from 0.03, 50 steps", S.linear_warmup(lr, 50, 0.03))], None),
        ("warmup_cosine_decay", [("30 warm-up", S.warmup_cosine_decay(lr, 30, n))], None),
        ("cosine_warm_restarts", [("T_0=30, T_mult=2", S.cosine_warm_restarts(lr, 30, 2)),
                                  ("T_0=75, T_mult=1", S.cosine_warm_restarts(lr, 75, 1, 0.02))],
         None),
        ("one_cycle", [("cos", S.one_cycle(lr, n)),
                       ("linear, three-phase", S.one_cycle(lr, n, anneal_strategy="linear",
                                                           three_phase=True))], None),
        ("cyclic", [("triangular", S.cyclic(0.01, lr, 25)),
                    ("triangular2", S.cyclic(0.01, lr, 25, mode="triangular2")),
                    ("exp_range 0.995", S.cyclic(0.01, lr, 25, mode="exp_range", gamma=0.995))],
         None),
        ("join", [("warm-up | exponential | constant",
                   S.join([S.linear_warmup(lr, 40), S.exponential_decay(lr, 0.98),
                           S.constant(0.01)], [40, 200]))], None),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"image file to write (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--steps", type=int, default=300, help="steps per panel (default 300)")
    args = parser.parse_args(argv)

    try:
        import matplotlib
    except ImportError:
        sys.exit("This example needs matplotlib: pip install matplotlib "
                 "(or pip install \"fusedoptim[demo]\").")
    matplotlib.use("Agg")  # file output only; no display needed
    import matplotlib.pyplot as plt

    from fusedoptim import schedules as S

    n = args.steps
    t = range(n + 1)
    content = panels(S, n)
    cols = 4
    rows = -(-len(content) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), sharex=True,
                             constrained_layout=True)
    for ax, (title, curves, drawstyle) in zip(axes.flat, content):
        for label, schedule in curves:
            ax.plot(t, [schedule(s) for s in t], label=label or None, lw=1.6,
                    drawstyle=drawstyle or "default")
        ax.set_title(f"schedules.{title}", fontsize=11, family="monospace")
        ax.set_ylim(0, 0.135)  # headroom above the 0.1 peak keeps legends off the curves
        ax.grid(alpha=0.3)
        if any(label for label, _ in curves):
            ax.legend(fontsize=8, loc="upper right", ncol=3 if len(curves) > 2 else 1,
                      handlelength=1.2, columnspacing=0.8)
    for ax in axes.flat[len(content):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("value")
    fig.suptitle(f"fusedoptim.schedules (value at each step, peak 0.1, {n} steps)",
                 fontsize=13)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
