"""The generated spec reference is current, covers every section, and lists built-ins only."""

from pathlib import Path

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
