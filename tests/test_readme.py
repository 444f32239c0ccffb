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
