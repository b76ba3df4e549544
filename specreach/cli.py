"""The ``specreach`` command line: a thin layer over the library.

Flags and overrides go in any order (``specreach run spec.yaml --dry-run train.steps=40``).
Quiet by default: MLflow's INFO lines, torch's vmap performance note and the source lines of
warnings appear only with ``-v``. Bad input and refusals print one clear message and exit 2;
``run`` exits 1 when a run failed and 130 when the runs were interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys


def cmd_run(args: argparse.Namespace) -> int:
    from specreach.config import check_spec, load_resumed_spec
    from specreach.engine import Engine

    execution = [f"execution.kind={args.executor}"] if args.executor else []
    execution += [f"execution.params.workers={args.workers}"] if args.workers is not None else []
    if args.resume:
        overrides = list(args.overrides)
        if args.spec and _is_override(args.spec):  # argparse reads the first override as the spec
            overrides.insert(0, args.spec)
        elif args.spec:
            raise ValueError(f"--resume continues a run directory as it was; give no spec with it (got {args.spec}; "
                             "execution.* overrides and --executor may change how its runs execute)")
        spec = load_resumed_spec(args.resume, [*execution, *overrides])
        engine = Engine.resume(args.resume, spec, tracking_uri=args.tracking_uri)
    else:
        if not args.spec:
            raise ValueError("give a spec file (or --resume DIR)")
        overrides = [*execution, *args.overrides] + ([f"output={args.output}"] if args.output else [])
        spec, warnings_found = check_spec(args.spec, overrides)
        for message in warnings_found:
            print(f"warning: {message}", file=sys.stderr)
        engine = Engine(spec, tracking_uri=args.tracking_uri, overwrite=args.overwrite)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(engine.spec.model_dump(mode="json"), sort_keys=False).rstrip())
        runs = engine.runs()
        print(f"\n{len(runs)} runs: executor {engine.spec.execution.kind}")
        for run in runs:
            needs = f", after {', '.join(run.needs)}" if run.needs else ""
            print(f"  {run.name}: {run.recipe.kind} {run.recipe.params}, lr {run.train.lr:g}, phase {run.phase}{needs}")
        return 0
    try:
        results = engine.run()
    except KeyboardInterrupt:  # a second Ctrl-C: the runs recorded how they stopped
        print(f"stopped; continue with: specreach run --resume {engine.root}", file=sys.stderr)
        return 130
    from specreach.engine.outcomes import outcome_lines

    sizes = {run.name: run.size for run in engine.runs()}
    for line in outcome_lines(results, sizes, engine.root):
        print(line)
    print(f"output: {engine.root}")
    print(f"tracking: {engine.tracking_uri}  ({view_hint(engine)})")
    if any(r.status == "KILLED" for r in results):
        print(f"interrupted; continue with: specreach run --resume {engine.root}")
        return 130
    return 1 if any(r.status == "FAILED" for r in results) else 0


def _is_override(text: str) -> bool:
    return "=" in text or text.startswith(("~", "+"))


def view_hint(engine) -> str:
    """How to open the store the runs were tracked in: the output folder's, another SQLite file, a server."""
    from specreach.tracking import SQLITE_PREFIX, local_tracking_uri

    uri = engine.tracking_uri
    if not engine.spec.tracking.uses_mlflow:
        return "no MLflow store: the metrics tables are in the output folder"
    if uri == local_tracking_uri(engine.root):
        return f"view with: specreach ui {engine.root}"
    if uri.startswith(SQLITE_PREFIX):
        return f"view with: specreach ui {uri}"
    return f"open {uri} in a browser" if uri.startswith(("http://", "https://")) else f"view with: mlflow ui " \
        f"--backend-store-uri {uri}"


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from specreach.paper.report import report

    output = Path(args.output) if args.output else Path(args.directories[0]) / "report"
    for path in report([Path(d) for d in args.directories], output):
        print(path)
    print(f"numbers: {output / 'summary.json'}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from specreach.config import SpecError, check_spec
    from specreach.engine.runs import TrackingTarget, expand

    try:
        spec, warnings_found = check_spec(args.spec, args.overrides, here=not args.anywhere)
    except SpecError as error:
        print(error, file=sys.stderr)
        return 1
    for message in warnings_found:
        print(f"{args.spec}: warning: {message}", file=sys.stderr)
    runs = expand(spec, Path(spec.output) / spec.name, TrackingTarget.off())  # no torch, no MLflow: fast
    print(f"{args.spec}: valid, {len(runs)} runs: {', '.join(r.name for r in runs)}")
    return 0


def cmd_check_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from specreach.config import SpecError, load_spec
    from specreach.engine.check_model import check_runs
    from specreach.engine.runs import TrackingTarget, expand

    try:
        spec = load_spec(args.spec, args.overrides)
    except SpecError as error:
        print(error, file=sys.stderr)
        return 1
    checks = check_runs(expand(spec, Path(spec.output) / spec.name, TrackingTarget.off()))
    for check in checks:
        verdict = "ok" if check.report.ok else "MISMATCH"
        print(f"{check.run}: {verdict}")
        print(check.report.describe())
        if args.paths:
            for name, path in check.report.paths.items():
                print(f"    {name}: {path}")
    if not all(check.report.ok for check in checks):
        print("the fast per-sample norms disagree with plain autograd on the models marked MISMATCH; measure them "
              "with estimator: entk and please report the model", file=sys.stderr)
        return 1
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from specreach.schema import spec_schema

    print(json.dumps(spec_schema(), indent=2))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    from pathlib import Path

    from specreach.tracking import SQLITE_PREFIX

    if args.store.startswith(SQLITE_PREFIX):  # a store named by its URI (SPECREACH_TRACKING_URI, --tracking-uri)
        uri, database = args.store, Path(args.store[len(SQLITE_PREFIX):])
    elif "://" in args.store:
        raise ValueError(f"{args.store} is not a SQLite store: a tracking server serves its own UI, open its "
                         "address in a browser")
    else:
        database = Path(args.store) / "mlflow.db"
        uri = f"{SQLITE_PREFIX}{database.resolve()}"
    if not database.exists():
        raise FileNotFoundError(f"no MLflow store at {database}: give the output directory of a run, or the "
                                "store's sqlite:/// URI (both are printed at the end of `specreach run`)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port)]
    print(" ".join(command), flush=True)
    # The UI starts workers of its own (a web server, huey consumers): it runs in a process group of
    # its own, and stopping this command stops the whole group.
    ui = subprocess.Popen(command, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        return ui.wait()
    except KeyboardInterrupt:
        _stop_group(ui)
        return 0


def _stop_group(process) -> None:
    """SIGTERM to a process group, then SIGKILL to what is left of it after 10 s."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children may linger a moment
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return


def cmd_sync(args: argparse.Namespace) -> int:
    from specreach.engine.sync import sync

    for line in sync(args.directory, args.tracking_uri):
        print(line)
    return 0


#: Where a spec names a component of each kind, and where its parameters go.
SPEC_PLACES = {"estimator": ("measure.estimator", "measure.options"), "dataset": ("data.kind", "data.params"),
               "model": ("model.kind", "model.params and model.sizes"), "executor": ("execution.kind", "execution.params"),
               "sink": ("tracking.sinks", "tracking.sinks: [{kind: NAME, params: {...}}]")}


def _component_lines(kind: str, registered) -> list[str]:
    """One component with its parameters: type, default and description of each, from its Pydantic model."""
    from specreach.spec_reference import constraints, default_text, type_name

    lines = [f"{registered.name}  ({kind}, from {registered.source}: {registered.target})"]
    if registered.summary:
        lines.append(f"  {registered.summary}")
    if kind not in SPEC_PLACES:
        return lines
    named, params_key = SPEC_PLACES[kind]
    imported = not registered.params_known
    fields = registered.params.model_fields
    if imported:
        lines.append("  (its parameters were read by importing it, as every spec using it must: register it with "
                     "params='module:Params', from a module that imports no torch, to validate specs without it)")
    lines.append(f"  in a spec: {named}: {'[' * (kind == 'sink')}{registered.name}{']' * (kind == 'sink')}; "
                 f"parameters under {params_key}"
                 + ("" if fields else " (none)"))
    for field_name, field in fields.items():
        kind_text = type_name(field.annotation, {}).replace("`", "")
        bounds = constraints(field)
        if bounds:
            kind_text += f", {', '.join(bounds)}".replace("`", "")
        default = default_text(field, {}).replace("`", "")
        lines.append(f"    {field_name}: {kind_text}; {default if default == 'required' else 'default ' + default}")
        if field.description:
            lines.append(f"        {field.description}")
    return lines


def cmd_plugins(args: argparse.Namespace) -> int:
    from specreach.plugins import KINDS, PluginLoadError, get_plugin_manager
    from specreach.suggest import did_you_mean

    manager = get_plugin_manager()
    if args.names or args.params:
        found = [(kind, registered) for kind in KINDS for name, registered in manager.registry(kind).items()
                 if not args.names or name in args.names]
        missing = [name for name in args.names if name not in {registered.name for _, registered in found}]
        if missing:
            everything = [name for kind in KINDS for name in manager.registry(kind)]
            raise ValueError("; ".join(f"no component '{name}' is registered{did_you_mean(name, everything)}"
                                       for name in missing))
        blocks = []
        for kind, registered in found:
            try:
                blocks.append("\n".join(_component_lines(kind, registered)))
            except PluginLoadError as error:
                blocks.append(f"{registered.name}  ({kind}, from {registered.source}): {error}")
        print("\n\n".join(blocks))
        return 0
    for info in KINDS.values():
        print(f"{info.title}:")
        for name, registered in manager.registry(info.name).items():
            try:
                summary = registered.summary
            except PluginLoadError as error:
                summary = f"FAILED TO IMPORT: {error}"
            print(f"  {name:<16} from {registered.source}{'  — ' + summary if summary else ''}")
        for name, sources in manager.conflicts(info.name).items():
            print(f"  {name:<16} UNUSABLE: registered twice, by {' and by '.join(sources)}")
        for (refused_kind, name), why in manager.refused.items():
            if refused_kind == info.name:
                print(f"  {name:<16} REFUSED: {why}")
    for source, message in manager.failed.items():
        print(f"failed to load: {source}: {message}")
    for source in manager.idle_plugins():
        print(f"registers nothing: {source}")
    print("\n`specreach plugins NAME` (or --params for all) shows a component's parameters.")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from specreach.engine.run_listing import format_runs, read_runs, summary_frame

    runs = read_runs(args.directories or ["runs"])
    if args.json:
        print(summary_frame(runs).to_json(orient="records", indent=2, double_precision=15))
    else:
        print(format_runs(runs))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from specreach.engine.run_listing import export, is_run_folder, read_runs

    runs = read_runs(args.directories)
    first = Path(args.directories[0])
    if not args.output and is_run_folder(first):
        raise ValueError(f"{first} is a run's folder, which export never writes into: give the file to write with "
                         "--output PATH")
    output = Path(args.output) if args.output else first / f"metrics.{args.format}"
    rows = export(runs, output, args.format)
    print(f"{output}: {rows} metric rows of {len(runs)} run{'s' * (len(runs) != 1)}")
    for run in runs:
        if run.cut_line:
            print(f"note: {run.name}: the last line of {run.folder.metrics} is cut short (its process was killed "
                  f"while writing it): exported its {len(run.rows)} whole rows", file=sys.stderr)
    damaged = [run for run in runs if run.problem]
    for run in damaged:
        print(f"not exported: {run.name}: {run.problem}", file=sys.stderr)
    return 1 if damaged else 0


def cmd_models(args: argparse.Namespace) -> int:
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
    parser.add_argument("-v", "--verbose", action="store_true", help="show MLflow's INFO lines and every warning "
                        "with its source line")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train and measure every run of a spec, tracked in MLflow")
    run.add_argument("spec", nargs="?", help="the spec file (YAML)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.presets=[a,b]")
    run.add_argument("--dry-run", action="store_true", help="print the resolved spec and its runs, run nothing")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run directory")
    run.add_argument("--output", metavar="DIR", help="output directory (overrides the spec's)")
    run.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: SQLite in the output)")
    run.add_argument("--executor", metavar="KIND", help="how the runs execute: local (default), processes, ray, or "
                     "a plugin's; same as execution.kind=KIND")
    run.add_argument("--workers", metavar="N", type=_positive, help="worker processes (execution.params.workers=N)")
    run.add_argument("--overwrite", action="store_true", help="when the output holds runs of another spec under "
                     "the same names, run every run again from scratch (without it, such a run is refused)")
    run.set_defaults(run=cmd_run, overrides_anywhere=True)

    report = commands.add_parser("report", help="draw the paper's figures from recorded runs")
    report.add_argument("directories", nargs="+", help="run output directories (spec roots or single runs)")
    report.add_argument("--output", metavar="DIR", help="where to write the figures (default: FIRST/report)")
    report.set_defaults(run=cmd_report)

    validate = commands.add_parser("validate", help="check a spec (and overrides) without running it")
    validate.add_argument("spec")
    validate.add_argument("overrides", nargs="*")
    validate.add_argument("--anywhere", action="store_true", help="skip the checks of this machine (devices, "
                          "memory): the runs execute elsewhere")
    validate.set_defaults(run=cmd_validate, overrides_anywhere=True)

    check = commands.add_parser("check-model", help="check the measurement on a spec's models against plain "
                                "autograd (per-sample norms on two validation samples)")
    check.add_argument("spec")
    check.add_argument("overrides", nargs="*")
    check.add_argument("--paths", action="store_true", help="also print how each parameter's norms are computed")
    check.set_defaults(run=cmd_check_model, overrides_anywhere=True)

    schema = commands.add_parser("schema", help="print the JSON schema of a spec, with every installed component's "
                                 "parameters")
    schema.set_defaults(run=cmd_schema)

    ui = commands.add_parser("ui", help="open the MLflow UI on a run directory's store (or a SQLite store's URI)")
    ui.add_argument("store", metavar="DIR_OR_URI", help="the output directory printed by `specreach run`, or a "
                    "sqlite:/// tracking URI (SPECREACH_TRACKING_URI)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(run=cmd_ui)

    sync = commands.add_parser("sync", help="upload to MLflow what a run directory holds and the tracking store "
                               "did not get (a server that was down); safe to repeat")
    sync.add_argument("directory", help="a spec's output directory (or one run's folder)")
    sync.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: the one the runs used)")
    sync.set_defaults(run=cmd_sync)

    plugins = commands.add_parser("plugins", help="list registered estimators, data sources, models and executors; "
                                  "with NAME or --params, their parameters")
    plugins.add_argument("names", nargs="*", metavar="NAME", help="components to describe with their parameters")
    plugins.add_argument("--params", action="store_true", help="describe every component with its parameters")
    plugins.set_defaults(run=cmd_plugins)

    runs = commands.add_parser("runs", help="list recorded runs: status, steps, final loss and P, sweep values, "
                               "wall time")
    runs.add_argument("directories", nargs="*", metavar="DIR", help="output folders of specs, single runs, or folders "
                      "holding several (default: runs)")
    runs.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    runs.set_defaults(run=cmd_runs)

    export = commands.add_parser("export", help="write every metric row of every run, with its sweep values and "
                                 "metadata, as one table")
    export.add_argument("directories", nargs="+", metavar="DIR", help="output folders (as for `specreach runs`)")
    export.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    export.add_argument("--output", "-o", metavar="PATH", help="the file to write (default: FIRST_DIR/metrics.FORMAT; "
                        "never a run's folder or a file a run recorded)")
    export.set_defaults(run=cmd_export)

    models = commands.add_parser("models", help="list the model presets of the paper's tables")
    models.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    models.set_defaults(run=cmd_models)

    coord = commands.add_parser("coord-check", help="muP coordinate check: activation scales across widths")
    coord.add_argument("preset", help="a preset name (its shape, scaled to each width)")
    coord.add_argument("--widths", default="48,96,192", help="comma-separated widths (default 48,96,192)")
    coord.add_argument("--steps", type=int, default=4)
    coord.add_argument("--lr", type=float, default=1e-2)
    coord.add_argument("--output", default="coord-check", help="plot path prefix (default coord-check)")
    coord.set_defaults(run=cmd_coord_check)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1 worker process")
    return value


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags and overrides in any order: what follows the spec and is not a flag is an override."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(item in ("-v", "--verbose") for item in argv)  # wherever it stands
    argv = [item for item in argv if item not in ("-v", "--verbose")]
    args, extra = parser.parse_known_args(argv)
    args.verbose = verbose
    unknown = [item for item in extra if item.startswith("-") and not item.startswith("~")]
    if unknown or (extra and not getattr(args, "overrides_anywhere", False)):
        parser.parse_args(argv)  # argparse's own message and exit
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def quiet(verbose: bool) -> None:
    """Keep a user's terminal for what they asked: MLflow's INFO lines, torch's vmap performance
    note and warnings' source lines only with -v (worker processes inherit the setting)."""
    import warnings

    if verbose:
        os.environ["SPECREACH_VERBOSE"] = "1"
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented "
                                              "the batching rule")
    vmap_note = "ignore:There is a performance drop because we have not yet implemented the batching rule"
    if vmap_note not in os.environ.get("PYTHONWARNINGS", ""):  # for worker processes
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), vmap_note]))

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = one_line


#: What to do about a file-system or connection error, by errno.
REMEDIES = {
    errno.ENOSPC: "the disk is full: free space, then run again (`specreach run --resume DIR` continues runs from "
                  "their last checkpoint)",
    errno.EDQUOT: "the disk quota is used up: free space, then run again (`specreach run --resume DIR` continues)",
    errno.EROFS: "the file system is read-only: give a folder you can write to (--output), or remount it writable",
    errno.EACCES: "give a folder you can write to (--output), or change its permissions",
    errno.EPERM: "give a folder you can write to (--output), or change its permissions",
    errno.ENAMETOOLONG: "a name is too long for the file system: shorten the output path, the spec's name or its "
                        "size names",
    errno.ENOTDIR: "a path that must be a folder is a file: give a folder",
    errno.EISDIR: "a path that must be a file is a folder: give a file",
    errno.EEXIST: "the path exists already: give another",
}


def describe(error: OSError) -> str:
    """An OSError as one line: the path, what the system said, and what to do."""
    if error.errno is None:  # raised with a message of our own
        return str(error)
    where = f"{error.filename}: " if error.filename else ""
    remedy = REMEDIES.get(error.errno)
    return f"{where}{error.strerror or error}" + (f"; {remedy}" if remedy else "")


def _stdout_is_closed() -> bool:
    """Whether this process's output went to a pipe whose reader is gone (`specreach runs | head`)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    from specreach.engine.executors import ExecutorFailed
    from specreach.engine.locks import FolderBusy

    args = parse(argv)
    quiet(args.verbose)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FolderBusy) as error:  # bad input: say what, without a traceback
        print(f"specreach {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specreach {args.command}: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError as error:
        if _stdout_is_closed():  # output piped into head & co.: nothing more to say
            return 0
        print(f"specreach {args.command}: error: {describe(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # the file system or a server: say which path and what to do
        print(f"specreach {args.command}: error: {describe(error)}", file=sys.stderr)
        return 1
    except ExecutorFailed as error:
        print(f"specreach {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
