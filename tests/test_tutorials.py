"""The tutorial notebooks: each runs top to bottom in fast mode, and is stored with its outputs.

Fast mode (``CAPTUM_GNDI_FAST=1``) makes every notebook shrink its data and integration steps;
the notebooks check their own key facts with ``assert`` cells (for example that the skip baseline
of the BERT tutorial equals leaving the block out), so a wrong number fails here too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_tutorials", TUTORIALS / "run_tutorials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.mark.slow
@pytest.mark.parametrize("name", runner.NOTEBOOKS)
def test_notebook_runs_in_fast_mode(name: str) -> None:
    reason = runner.skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    # raises CellExecutionError, showing the failing cell and its traceback
    runner.execute_notebook(TUTORIALS / name, fast=True, timeout=300)


@pytest.mark.parametrize("name", runner.NOTEBOOKS)
def test_notebook_is_stored_with_full_mode_outputs(name: str) -> None:
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "re-run make tutorials"
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "plots are stored inline"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "fast mode: True" not in text, "the stored outputs come from a fast-mode run"


@pytest.mark.parametrize("name", runner.NOTEBOOKS)
def test_notebook_opens_with_goals_and_ends_with_next_steps(name: str) -> None:
    cells = nbformat.read(TUTORIALS / name, as_version=4).cells
    assert cells[0].cell_type == "markdown"
    assert "What you will learn" in cells[0].source and "**Time**" in cells[0].source
    assert cells[-1].cell_type == "markdown" and "What to try next" in cells[-1].source


def test_fast_mode_environment() -> None:
    fast, full = runner.kernel_env(fast=True), runner.kernel_env(fast=False)
    assert fast[runner.FAST_ENV] == "1" and runner.FAST_ENV not in full
    assert fast["MPLBACKEND"] == "Agg" and "inline" in full["MPLBACKEND"]
    assert fast["HF_HUB_OFFLINE"] == full["HF_HUB_OFFLINE"] == "1"


def test_llm_tutorial_skips_without_the_smollm2_weights(monkeypatch, tmp_path) -> None:
    import importlib.metadata

    from captum_gndi.zoo import SMOLLM2_INSTALL, smollm2_cache_dir
    from captum_gndi.zoo.smollm2 import SOURCE_FILE

    pytest.importorskip("transformers")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing dequantised yet

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    reason = runner.skip_reason("GNDI_LLM_IOI.ipynb")
    assert reason is not None and reason.startswith("SmolLM2 is not available")
    assert SMOLLM2_INSTALL in reason  # says how to install the weights
    # a cache made before the weights were uninstalled still loads: no skip
    smollm2_cache_dir().mkdir(parents=True)
    (smollm2_cache_dir() / SOURCE_FILE).write_text("{}")
    assert runner.skip_reason("GNDI_LLM_IOI.ipynb") is None
