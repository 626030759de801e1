"""Bad options: one line naming the option, exit code 2, no traceback, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    rows = ["a,b,c,target"] + [f"{i},{i * 2},{i % 3},{i % 2}" for i in range(20)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


@pytest.mark.parametrize(
    ("args", "option", "text"),
    [
        (["--student", "transformerz:depth=2"], "--student", "unknown architecture"),
        (["--teachers", "mlp:hidden=64", "nope"], "--teachers", "unknown architecture"),
        (["--data", "missing.parquet"], "--data", "no such file"),
        (["--label-column", "y"], "--label-column", "is not a column"),
        (["--temperature", "0"], "--temperature", "must be > 0"),
        (["--temperature", "-2"], "--temperature", "must be > 0"),
        (["--alpha", "1.5"], "--alpha", "must be in [0, 1]"),
        (["--alpha", "-0.1"], "--alpha", "must be in [0, 1]"),
        (["--workers", "-1"], "--workers", "0 (in-process) or more"),
        (["--input-shape", "3,3"], "--input-shape", "holds 9 values"),
        (["--student", "cnn:channels=4"], "--student", "C,H,W"),
        (["--temperature", "hot"], "--temperature", "invalid float value"),
        (["--temperature", "inf"], "--temperature", "must be a finite number, got inf"),
        (["--min-speedup", "inf"], "--min-speedup", "must be a finite number, got inf"),
        (["--alpha", "nan"], "--alpha", "must be a finite number, got nan"),
        (["--confidence", "1"], "--confidence", "must be in [0.5, 1)"),
        (["--gate-test", "bootstrap"], "--gate-test", "must be one of paired, point"),
        (["--tracking-uri", "mlruns"], "--tracking-uri", "'mlruns' has no scheme"),
        (["--latency-batch", "0"], "--latency-batch", "must be in [1, 65536], got 0"),
        (["--seeds", "0", "1", "0"], "--seeds", "names a seed twice"),
        (["--seeds", "-1"], "--seeds", "must be 0 or more"),
        (["--seeds", "one"], "--seeds", "expected an integer"),
        (["--tracking-uri", "localhost:5000"], "--tracking-uri",
         "is a host and port, not a URI; give http://localhost:5000"),
    ],
)
def test_bad_option_is_one_line_naming_it(args, option, text, data_csv):
    base = ["run", "--data", str(data_csv), "--label-column", "target"]
    proc = run_cli(*base, *args, cwd=data_csv.parent)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert option in lines[0] and text in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not (data_csv.parent / "outputs").exists(), "nothing may start on a bad option"


@pytest.mark.parametrize("command", [["models", "list", "m"], ["promote", "m", "1"],
                                     ["rollback", "m"], ["compare", "m", "1", "2"]])
def test_registry_commands_refuse_a_tracking_uri_without_a_scheme(command, tmp_path):
    proc = run_cli(*command, "--tracking-uri", "./mlflow.db", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "--tracking-uri: './mlflow.db' has no scheme; give sqlite:///" in line
    assert not list(tmp_path.iterdir()), "no store may be created"


def test_bad_config_file_key_is_named(tmp_path, data_csv):
    config = tmp_path / "run.yaml"
    config.write_text("distill:\n  temprature: 2\n")
    proc = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2
    assert "temprature" in proc.stderr and "unknown setting" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "option", "text"),
    [
        (["--feature-weight", "1"], "--feature-weight", "needs --teacher-mode online"),
        (
            ["--teacher-mode", "online", "--feature-weight", "1",
             "--feature-layers", "net.9=net.1"],
            "--feature-layers",
            "no layer 'net.9' in the teacher (mlp:hidden=8)",
        ),
        (
            ["--teacher-mode", "online", "--attention-weight", "1", "--student",
             "transformer:dim=8,heads=2"],
            "--attention-weight",
            "needs transformer teacher and student; the teacher is mlp:hidden=8",
        ),
        (
            ["--ensemble", "weighted_probs", "--teacher-weights", "1", "2", "3"],
            "--teacher-weights",
            "3 weights for 2 teachers",
        ),
        (["--teacher-mode", "online", "--feature-weight", "1", "--hint-teacher", "2"],
         "--hint-teacher", "2 but there are 2 teachers"),
    ],
)
def test_bad_distillation_method_option_is_one_line_naming_it(args, option, text, data_csv):
    base = ["run", "--data", str(data_csv), "--label-column", "target",
            "--teachers", "mlp:hidden=8", "mlp:hidden=4"]
    proc = run_cli(*base, *args, cwd=data_csv.parent)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert option in lines[0] and text in lines[0], lines[0]
    assert not (data_csv.parent / "outputs").exists(), "nothing may start on a bad option"


def test_every_subcommand_prints_its_help(capsys) -> None:
    """argparse formats help text with %: a setting's docstring ("60-100% of the area") once
    crashed `kdflow run --help` with a TypeError."""
    from pipelines.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and "run" in a.choices).choices
    for name, sub in commands.items():
        text = sub.format_help()
        assert "usage:" in text, name
    assert "60-100% of the area" in " ".join(commands["run"].format_help().split())
