"""The ``specreach`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import sys


def cmd_demo(args: argparse.Namespace) -> int:
    from specreach.demo import run_demo

    run_demo(steps=args.steps, measurements=args.measurements, probes=args.probes, seed=args.seed)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from specreach.plugins import get_plugin_manager

    manager = get_plugin_manager()
    print("estimators:")
    for name, registered in manager.estimators().items():
        doc = (registered.component.__doc__ or "").strip().splitlines()
        print(f"  {name:<12} from {registered.source}{'  — ' + doc[0] if doc else ''}")
    for source, message in manager.failed.items():
        print(f"failed to load: {source}: {message}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from specreach.models.catalog import preset_rows

    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<28} {'architecture':<12} {'parameters':>12} {'paper':>7} {'lr':>8}  shape")
    for row in rows:
        lr = f"{row['learning_rate']:g}" if row["learning_rate"] else "-"
        shape = " ".join(f"{k}={v}" for k, v in row["params"].items())
        mup = "  (muP, base width {})".format(row["parameterization"]["base_width"]) if row["parameterization"]["kind"] == "mup" else ""
        print(f"{row['name']:<28} {row['architecture']:<12} {row['parameters']:>12,} {row['paper_parameters']:>7} {lr:>8}  {shape}{mup}")
    return 0


def cmd_coord_check(args: argparse.Namespace) -> int:
    from specreach.models.coord_check import coord_check, plot_coord_check
    from specreach.models.parameterization import Parameterization
    from specreach.models.presets import get_preset

    preset = get_preset(args.preset)
    widths = [int(w) for w in args.widths.split(",")]
    for kind in ("standard", "mup"):
        parameterization = Parameterization(kind=kind, base_width=widths[0] if kind == "mup" else None)
        scales = coord_check(preset.kind, preset.params, widths, parameterization, steps=args.steps, lr=args.lr)
        path = plot_coord_check(scales, f"{args.output}-{kind}.png", f"{preset.name}, {kind}, Adam lr {args.lr:g}")
        final = {w: scales[w][list(scales[w])[-1]][-1] for w in widths}
        print(f"{kind:>8}: output |logit| after {args.steps} steps by width: "
              + ", ".join(f"{w}: {v:.3g}" for w, v in final.items()) + f"  -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specreach", description="Measure the LNP decomposition of training.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a small Llama on built-in text and print the LNP components")
    demo.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    demo.add_argument("--measurements", type=int, default=8, help="log-spaced measurement steps (default 8)")
    demo.add_argument("--probes", type=int, default=8, help="Hutchinson probes per batch (default 8)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)

    plugins = commands.add_parser("plugins", help="list registered estimators and where they come from")
    plugins.set_defaults(run=cmd_plugins)

    models = commands.add_parser("models", help="list the model presets of the paper's tables")
    models.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    models.set_defaults(run=cmd_models)

    coord = commands.add_parser("coord-check", help="muP coordinate check: activation scales across widths")
    coord.add_argument("preset", help="a preset name (its shape, scaled to each width)")
    coord.add_argument("--widths", default="32,64,128", help="comma-separated widths (default 32,64,128)")
    coord.add_argument("--steps", type=int, default=4)
    coord.add_argument("--lr", type=float, default=1e-2)
    coord.add_argument("--output", default="coord-check", help="plot path prefix (default coord-check)")
    coord.set_defaults(run=cmd_coord_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: say what, without a traceback
        print(f"specreach {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        return 0


if __name__ == "__main__":
    sys.exit(main())
