"""The captum-gndi command line: help, describe, score/validate on a tiny model, and one-line
errors with exit status 2 for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from captum_gndi.cli import main
from captum_gndi.zoo import digits_resnet


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_python_m_help_explains_commands_with_examples():
    done = subprocess.run(
        [sys.executable, "-m", "captum_gndi", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for word in ("validate", "score", "describe", "demo", "examples:"):
        assert word in done.stdout


def test_describe_lists_branches(capsys):
    assert main(["describe", "--model", "cifar-resnet20", "--granularity", "branch"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.bn2" in out and "layer3.2.bn2" in out and "(1, 64, 8, 8)" in out
    assert main(["describe", "--model", "torchvision:resnet18", "--granularity", "block"]) == 0
    assert "layer4.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["describe", "--model", "resnet-9000"], "unknown model 'resnet-9000'"),
        (["describe", "--model", "cifar-resnet20", "--weights", "/no/such.th"], "not found"),
        (["describe", "--model", "cifar-resnet20", "--granularity", "sideways"], "sideways"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_corrupt_checkpoint_and_folder_without_cifar(tmp_path, capsys):
    broken = tmp_path / "broken.th"
    broken.write_bytes(b"not a checkpoint at all")
    assert main(["describe", "--model", "cifar-resnet20", "--weights", str(broken)]) == 2
    assert "corrupt" in _error_line(capsys)
    argv = ["score", "--model", "cifar-resnet20", "--data-dir", str(tmp_path), "--quiet"]
    assert main(argv) == 2
    assert "no CIFAR-10" in _error_line(capsys)


@pytest.fixture
def digits_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "digits.pt"
    torch.save(digits_resnet().state_dict(), path)
    return str(path)


def test_score_and_validate_on_digits(digits_weights, tmp_path, capsys):
    common = ["--model", "digits-resnet", "--weights", digits_weights, "--limit", "24",
              "--granularity", "branch", "--quiet"]  # fmt: skip
    out_dir = tmp_path / "scores"
    assert main(["score", *common, "--methods", "gndi,depth", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "layer4.1.bn2" in printed and (out_dir / "scores.csv").is_file()
    rows = (out_dir / "scores.csv").read_text().splitlines()
    assert rows[0] == "unit,position,gndi,depth" and len(rows) == 9

    report_dir = tmp_path / "report"
    argv = ["validate", *common, "--methods", "gndi,activation_change,depth", "--n-boot", "50",
            "--damage", "output_delta,accuracy_drop", "--out", str(report_dir)]  # fmt: skip
    assert main(argv) == 0
    assert (report_dir / "report.md").is_file() and (report_dir / "units.csv").is_file()
    assert "report written to" in capsys.readouterr().out
    assert main([*argv[:-2], "--damage", "loudness", "--out", str(report_dir)]) == 2
    assert "loudness" in _error_line(capsys)
