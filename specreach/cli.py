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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
