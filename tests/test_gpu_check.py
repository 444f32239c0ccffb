"""benchmarks/gpu_check.py, the check prepared for a lent GPU, runs its dry run on the CPU (tiny
sizes, the same code), so it cannot rot before a GPU is lent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_dry_run_passes_every_check(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--dry-run", "--out", str(tmp_path / "gpu_check.json")])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["meta"]["dry_run"] is True
    assert report["errors"] == []
    checks = {c["name"]: c for c in report["checks"]}
    assert [name for name, c in checks.items() if c["ok"] is False] == []
    for attention in ("eager", "sdpa"):
        for engine in ("reverse", "probes", "input_path", "patching", "verify"):
            assert checks[f"{attention}/{engine} float32 cpu vs cpu"]["difference"] == 0
    assert checks["eager/forward bfloat16 cpu vs cpu float32"]["difference"] > 0
    assert "mode='reverse'" in checks["sdpa/forward (cpu)"]["unsupported"]  # no CPU forward AD
    assert checks["dispatched/forward (cpu + disk) vs cpu"]["hooks_unchanged"]
    timed = {t["name"].split(":")[0] for t in report["timings"]}
    assert {"verify_top_k vs brute force", "resnet18"} <= timed
    verify = next(t for t in report["timings"] if t["name"] == "verify_top_k vs brute force")
    assert verify["recall"] == 1.0
