"""The README's quick start runs as written (from the repository root, with the shared data)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quick_start_runs(shared_data, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"```python\n(import torch\nfrom captum.attr import IntegratedGradients.*?)```",
        readme,
        re.S,
    )
    assert block, "the quick-start block is missing from the README"
    code = block.group(1).replace("../shared/data", os.fspath(shared_data))
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.n_examples == 64 and len(result.names) == 9
    assert namespace["scores"][0].shape == (4,)
    assert namespace["delta"][0].shape == (4,)


def test_readme_transformer_loader_example_runs(monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(from torch.utils.data import DataLoader\n.*?)```", readme, re.S)
    assert block, "the transformer loader example is missing from the README"
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(block.group(1).replace("print(result)", ""), "README.md", "exec"), namespace)
    result, next_token = namespace["result"], namespace["next_token"]
    assert result.n_examples == 8 and len(result.names) == 4
    assert result.mean[result.names[0]].shape == (4,) and result.settings["p"] == "fisher"
    assert result.probe_stderr is not None
    assert next_token.mean[next_token.names[0]].shape == (4,)
