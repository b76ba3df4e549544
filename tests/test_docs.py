"""The generated spec reference is current, covers every section, and lists built-ins only; every
example in README.md and docs/ runs as it stands (or says why it is not run)."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from specreach.spec import Spec
from specreach.spec_reference import REGENERATE, render_spec_reference, spec_sections

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "spec-reference.md"


def test_spec_reference_is_up_to_date():
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert committed == render_spec_reference(), (
        f"docs/spec-reference.md does not match the spec models; regenerate it from the repository root with:\n"
        f"    .venv/bin/{REGENERATE}"
    )


def test_every_spec_key_has_a_row():
    rendered = render_spec_reference()
    keys = [f"{prefix}.{name}" if prefix else name
            for prefix, model in spec_sections() for name in model.model_fields]
    assert {"train.lr", "measure.schedule.windows", "parameterization.base_width", "probe.backbones"} <= set(keys)
    assert set(Spec.model_fields) <= set(keys)
    for key in keys:
        assert f"| `{key}` |" in rendered, key


def test_installed_plugins_stay_out_of_the_reference():
    """The example plugin is installed in the test environment; the page must not depend on that."""
    from specreach.plugins import get_plugin_manager

    assert "kta" in get_plugin_manager().estimators()
    rendered = render_spec_reference()
    assert "#### `kta`" not in rendered and "specreach_kta" not in rendered
    assert "#### `hutchinson`" in rendered and "#### `digits`" in rendered and "#### `vit`" in rendered


# --- the examples in README.md and docs/ run as they stand -----------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(path for path in (ROOT / "docs").glob("*.md") if path.name != "spec-reference.md")]
BLOCK = re.compile(r"(?:<!-- (?P<marker>not run|docs-test): ?(?P<note>.*?) -->\n)?^(?P<indent>[ ]*)```(?P<language>\w*)\n"
                   r"(?P<code>.*?)^(?P=indent)```", re.S | re.M)
RUNNABLE = ("bash", "python")
#: Pages whose examples train runs (minutes): the slow set runs them, in this order, in one workspace.
TRAINING_PAGES = ("README.md", "engine.md", "mlflow.md", "scaling.md")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    marker: str | None
    note: str


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["code"].splitlines(keepends=True))
        found.append(Block(page.name, text[:match.start("indent")].count("\n") + 1, match["language"], code,
                           match["marker"], match["note"] or ""))
    return found


def runnable(page: Path) -> list[Block]:
    return [block for block in blocks(page) if block.language in RUNNABLE and block.marker != "not run"]


def session_script(page: Path) -> str:
    """The page's examples, in order, as one shell session (an `export` holds for what follows, as in a
    terminal); Python examples through the interpreter's standard input."""
    parts = ["set -euo pipefail"]
    for block in runnable(page):
        parts.append(f"echo '--- {block.page}:{block.line}' >&2")
        if block.language == "bash":
            parts.append(block.code)
        else:
            parts.append(f"python - <<'SPECREACH_EXAMPLE'\n{block.code}SPECREACH_EXAMPLE")
    return "\n".join(parts) + "\n"


def run_page(page: Path, workspace: Path, timeout: int):
    """The page's examples as a person runs them: in a folder with the project's specs, `specreach` and
    `python` those of this environment, and the home folder inside the workspace."""
    import shutil

    if not (workspace / "specs").exists():
        shutil.copytree(ROOT / "specs", workspace / "specs")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(workspace), "MPLBACKEND": "Agg",
           "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("SPECREACH_TRACKING_URI", None)
    done = subprocess.run(["bash", "-c", session_script(page)], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{page.name}: {done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done


def test_every_runnable_looking_example_runs_or_says_why_not():
    """A bash or Python block is run by the tests below unless marked `<!-- not run: why -->`."""
    for page in PAGES:
        for block in blocks(page):
            if block.marker == "not run":
                assert len(block.note.split()) >= 3, f"{page.name}:{block.line}: say why it is not run"
            if block.language in RUNNABLE and block.marker != "not run":
                assert page.name in TRAINING_PAGES or page.name in QUICK_PAGES, f"{page.name}:{block.line} is run by no test"
    assert set(TRAINING_PAGES) | set(QUICK_PAGES) == {page.name for page in PAGES if runnable(page)}


def test_the_readme_spec_validates(tmp_path):
    (block,) = [block for block in blocks(ROOT / "README.md") if block.language == "yaml"]
    path = tmp_path / "my-sweep.yaml"
    path.write_text(block.code)
    done = subprocess.run([sys.executable, "-m", "specreach.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "valid, 6 runs" in done.stdout


#: Pages whose examples train nothing that lasts: estimators.md takes seconds and runs in the default suite;
#: plugins.md (torch imported for each of its seven examples) and training-loop.md's four fits (Lightning,
#: transformers: about a minute) in the slow set.
QUICK_PAGES = ("estimators.md", "plugins.md", "training-loop.md")


@pytest.mark.parametrize("name", ["estimators.md", pytest.param("plugins.md", marks=pytest.mark.slow),
                                  pytest.param("training-loop.md", marks=pytest.mark.slow)])
def test_the_examples_of_a_page_run_as_they_stand(name, tmp_path):
    done = run_page(ROOT / "docs" / name, tmp_path, timeout=600)
    if name == "training-loop.md":  # the callbacks, as documented, inside real fits
        assert (tmp_path / "metrics.csv").exists() and (tmp_path / "mlflow.db").exists()
        logged = (next((tmp_path / "logs").rglob("metrics.csv"))).read_text()
        assert "lnp/spectral_position" in logged
        assert done.stdout.strip().splitlines()[-1].startswith("[")  # the Trainer's lnp/ entries, printed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One folder for the pages that train: a later page finds the runs an earlier one made (skipped)."""
    return tmp_path_factory.mktemp("docs-workspace")


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINING_PAGES)
def test_the_examples_that_train_run_as_they_stand(name, workspace):
    page = ROOT / name if name == "README.md" else ROOT / "docs" / name
    done = run_page(page, workspace, timeout=3000)
    if name == "mlflow.md":
        assert (workspace / "experiments" / "mlflow.db").exists()  # the workspace store of SPECREACH_TRACKING_URI
        assert (workspace / "runs" / "lr-sweep" / "metrics.parquet").exists()
        assert "lr=0.001-default-seed0" in done.stdout


def test_ci_runs_exactly_the_readmes_test_command():
    (install,) = [block for block in blocks(ROOT / "README.md") if block.language == "bash"]
    test_command = next(line for line in install.code.splitlines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
