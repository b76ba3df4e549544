"""The spec layer is pure: validating a spec, listing its runs and printing the schema import no
torch (nor mup, opacus, timm, MLflow), so everyday commands answer at once."""

import json
import subprocess
import sys

from engine_helpers import write_spec

HEAVY = ("torch", "mup", "opacus", "timm", "mlflow", "ray")


def imported_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; which heavy packages did it import?"""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_validating_and_expanding_a_spec_imports_no_torch(tmp_path):
    path = write_spec(tmp_path)
    found = imported_after(
        "from pathlib import Path\n"
        "from specreach.config import load_spec\n"
        "from specreach.engine.runs import TrackingTarget, expand\n"
        f"spec = load_spec({str(path)!r}, ['execution.kind=processes', 'execution.params.workers=2', 'probe={{}}'])\n"
        "runs = expand(spec, Path('out'), TrackingTarget.off())\n"
        "assert [r.name for r in runs][:2] == ['s-seed0', 's-seed0-probe-trained'], runs\n"
    )
    assert not any(found.values()), found


def test_validate_and_help_import_no_torch(tmp_path):
    path = write_spec(tmp_path)
    for argv in (["validate", str(path), "execution.kind=ray"], ["run", "--help"], ["schema"],
                 ["plugins", "--params"]):
        code = ("import contextlib, io\nfrom specreach.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                "    try:\n"
                f"        main({argv!r})\n"
                "    except SystemExit:\n"
                "        pass\n")
        assert not any(imported_after(code).values()), argv


def test_a_lazily_registered_component_is_checked_when_imported():
    """What a registration declares without importing (params, uses_probes) is what the class says."""
    from specreach.plugins import PluginManager

    manager = PluginManager(load_entry_points=False)
    for registry in (manager.estimators(), manager.datasets(), manager.models(), manager.executors()):
        for name, entry in registry.items():
            component = entry.component  # imports it, and raises if a declaration is wrong
            assert component.name == name
            assert entry.params is component.Params
    # A spec without measure.options skips validating them for estimators registered by name: they must
    # all accept none.
    for entry in manager.estimators().values():
        entry.params()
    assert manager.estimators()["hutchinson"].attribute("uses_probes") is True
