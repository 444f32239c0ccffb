"""The captum-gndi command line: help, describe, score/validate on a tiny model, one-line
errors with exit status 2 for bad input, and the deprecated flag spellings."""

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
    assert main(["describe", "--model", "cifar-resnet20", "--kind", "branch"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.bn2" in out and "layer3.2.bn2" in out and "(1, 64, 8, 8)" in out
    assert main(["describe", "--model", "torchvision:resnet18", "--kind", "block"]) == 0
    assert "layer4.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["describe", "--model", "resnet-9000"], "unknown model 'resnet-9000'"),
        (["describe", "--model", "cifar-resnet20", "--weights", "/no/such.th"], "not found"),
        (["describe", "--model", "cifar-resnet20", "--kind", "sideways"], "sideways"),
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


@pytest.mark.parametrize("error", [TypeError("bug"), KeyError("bug"), PermissionError("bug")])
def test_a_library_error_keeps_its_traceback(error, monkeypatch, capsys):
    import captum_gndi.adapters

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(captum_gndi.adapters, "describe_layers", broken)
    with pytest.raises(type(error)) as raised:
        main(["describe", "--model", "cifar-resnet20", "--kind", "branch", "--quiet"])
    assert raised.value is error
    assert "error:" not in capsys.readouterr().err


@pytest.fixture
def digits_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "digits.pt"
    torch.save(digits_resnet().state_dict(), path)
    return str(path)


def test_score_and_validate_on_digits(digits_weights, tmp_path, capsys):
    common = ["--model", "digits-resnet", "--weights", digits_weights, "--limit", "24",
              "--kind", "branch", "--quiet"]  # fmt: skip
    out_dir = tmp_path / "scores"
    assert main(["score", *common, "--criteria", "gndi,depth", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "layer4.1.bn2" in printed and (out_dir / "scores.csv").is_file()
    rows = (out_dir / "scores.csv").read_text().splitlines()
    assert rows[0] == "unit,position,gndi,depth" and len(rows) == 9

    report_dir = tmp_path / "report"
    argv = ["validate", *common, "--criteria", "gndi,activation_change,depth", "--n-boot", "50",
            "--damage", "output_delta,accuracy_drop", "--out", str(report_dir)]  # fmt: skip
    assert main(argv) == 0
    assert (report_dir / "report.md").is_file() and (report_dir / "units.csv").is_file()
    assert "report written to" in capsys.readouterr().out
    assert main([*argv[:-2], "--damage", "loudness", "--out", str(report_dir)]) == 2
    assert "loudness" in _error_line(capsys)


def test_score_and_validate_take_target_norm_and_n_probes(digits_weights, tmp_path, capsys):
    from captum_gndi import compute_gndi
    from captum_gndi.cli import build_parser
    from captum_gndi.cli.loaders import prepare_scoring

    common = ["--model", "digits-resnet", "--weights", digits_weights, "--limit", "24",
              "--batch-size", "12", "--kind", "branch", "--quiet"]  # fmt: skip
    out_dir = tmp_path / "scores"
    argv = ["score", *common, "--criteria", "gndi", "--norm", "fisher", "--n-probes", "4"]
    assert main([*argv, "--out", str(out_dir)]) == 0
    rows = [line.split(",") for line in (out_dir / "scores.csv").read_text().splitlines()[1:]]
    # the same model, data and layers through the API: compute_gndi with the same options
    loaded, loader, layers = prepare_scoring(build_parser().parse_args(argv))
    direct = compute_gndi(
        loaded.model, loader, layers, norm="fisher", n_probes=4, progress=False,
        check_first_order=0,
    )  # fmt: skip
    assert [row[0] for row in rows] == direct.names
    printed = torch.tensor([float(row[2]) for row in rows], dtype=torch.float64)
    expected = torch.stack([direct.mean[name] for name in direct.names]).double()
    torch.testing.assert_close(printed, expected)
    capsys.readouterr()
    assert main(["score", *common, "--criteria", "gndi", "--norm", "l1", "--n-probes", "4"]) == 2
    assert "use norm=2 or norm='fisher' with n_probes" in _error_line(capsys)

    parsed = build_parser().parse_args(
        ["validate", "--model", "m", "--target", "predicted", "--norm", "3", "--n-probes", "2"]
    )
    assert (parsed.target, parsed.norm, parsed.n_probes) == ("predicted", 3.0, 2)
    verify = build_parser().parse_args(["verify", "--model", "m", "--target", "4"])
    assert verify.target == 4 and not hasattr(verify, "norm")


# ------------------------------------------------------------------------------------------------
# one word per concept, and the old spellings (accepted for one release, with a warning)


@pytest.mark.parametrize("command", ["describe", "score", "validate", "demo", "prune"])
def test_help_uses_one_word_per_concept(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for old in ("--methods", "--level", "--criterion ", "method"):
        assert old not in text, old
    if command in ("describe", "score", "validate"):
        assert "--kind" in text
    if command in ("score", "validate"):
        assert "--granularity {layer,channel}" in text and "--criteria" in text
    if command == "prune":
        assert "--criteria" in text


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("captum-gndi: warning:")]


def test_deprecated_granularity_of_describe_is_the_kind(capsys):
    assert main(["describe", "--model", "cifar-resnet20", "--granularity", "branch"]) == 0
    captured = capsys.readouterr()
    assert "layer1.0.bn2" in captured.out and "layer3.2.bn2" in captured.out
    (warning,) = _warnings(captured.err)
    assert "--granularity is deprecated; use --kind" in warning
    assert main(["describe", "--model", "cifar-resnet20", "--granularity", "sideways"]) == 2
    err = capsys.readouterr().err
    assert len(_warnings(err)) == 1 and "unknown --kind 'sideways'" in err


def test_deprecated_spellings_of_score_give_the_same_table(digits_weights, capsys):
    base = ["score", "--model", "digits-resnet", "--weights", digits_weights, "--limit", "24",
            "--quiet"]  # fmt: skip
    assert main([*base, "--kind", "branch", "--criteria", "gndi,depth"]) == 0
    new = capsys.readouterr()
    assert new.err == ""
    old_argv = [*base, "--granularity", "branch", "--methods", "gndi,depth", "--level", "layer"]
    assert main(old_argv) == 0
    old = capsys.readouterr()
    assert old.out == new.out
    warnings = _warnings(old.err)
    assert len(warnings) == 3, old.err
    assert "use --kind branch" in warnings[0]
    assert "--methods is deprecated; use --criteria" in warnings[1]
    assert "--level is deprecated; use --granularity" in warnings[2]


def test_level_channel_and_new_granularity_channel_agree(digits_weights, capsys):
    base = ["score", "--model", "digits-resnet", "--weights", digits_weights, "--limit", "16",
            "--kind", "branch", "--criteria", "depth", "--quiet"]  # fmt: skip
    assert main([*base, "--granularity", "channel"]) == 0
    new = capsys.readouterr().out
    assert "layer1.0.bn2[0]" in new and "layer4.1.bn2[0]" in new
    assert main([*base, "--level", "channel"]) == 0
    old = capsys.readouterr()
    assert old.out == new and len(_warnings(old.err)) == 1


def test_unknown_granularity_is_one_line(digits_weights, capsys):
    argv = ["score", "--model", "digits-resnet", "--weights", digits_weights,
            "--granularity", "neuron", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert "unknown --granularity 'neuron'" in _error_line(capsys)


def test_console_script_entry_point_is_the_package_main():
    from importlib.metadata import entry_points

    import captum_gndi.cli

    scripts = {e.name: e for e in entry_points(group="console_scripts")}
    if "captum-gndi" in scripts:  # installed (editable or not)
        assert scripts["captum-gndi"].load() is captum_gndi.cli.main


def test_a_zoo_model_without_weights_is_seeded_and_named_untrained():
    """Without --weights the CLI's model is an untrained network: it says so, and the same
    --seed gives the same weights (and scores), without touching the caller's random state."""
    from captum_gndi.cli.loaders import load_model

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="no --weights: .*untrained network"):
        first = load_model("cifar-resnet20", None, seed=0, verbose=False).model
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.warns(UserWarning, match="--weights CHECKPOINT"):
        again = load_model("cifar-resnet20", None, seed=0, verbose=False).model
        other = load_model("cifar-resnet20", None, seed=1, verbose=False).model
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    conv = "conv1.weight"
    assert not torch.equal(first.state_dict()[conv], other.state_dict()[conv])
