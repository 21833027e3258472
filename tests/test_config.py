"""Config: YAML + dotted overrides, validated; bad input is one line on stderr and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gangaps.config import load_config
from gangaps.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_reach_nested_sections_and_default_lists():
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml",
                      ["gan.lr=2e-4", "experiment.fool_mode=memoryless", "classifiers.1.seeds=[7]",
                       "gan.betas=[0.5, 0.99]"])
    assert cfg.gan.lr == 2e-4
    assert cfg.experiment.fool_mode == "memoryless"
    assert cfg.classifiers[1].seeds == [7]
    assert cfg.gan.betas == (0.5, 0.99)


@pytest.mark.parametrize("override, fragment", [
    ("gan.lrr=1", "gan.lrr: unknown key"),
    ("gan.lr=abc", "gan.lr"),
    ("experiment.fool_lambda=-1", "experiment.fool_lambda"),
    ("experiment.instances=1", "experiment.instances"),
    ("experiment.heldout_instances=10", "leaves no train generator"),
    ("experiment.fool_mode=sometimes", "experiment.fool_mode"),
    ("nonsense", "not key=value"),
])
def test_bad_values_are_one_line_user_errors(override, fragment):
    with pytest.raises(UserError) as err:
        load_config(ROOT / "configs" / "mnist-dcgan.yaml", [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def _gangaps(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gangaps.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("args", [
    ["experiment.fool_lambda=-1"],
    ["experiment.instances=1"],
    ["experiment.heldout_instances=4", "experiment.instances=4"],
    ["gan.unknown_key=3"],
    ["gan.batch_size=many"],
    ["data.path=/nonexistent/folder"],
    ["classifiers.0.arch=no_such_net"],
    ["gan.options.depth=3"],
])
def test_cli_rejects_bad_input_without_touching_an_existing_run(tmp_path, data_root, args):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: previous\n")
    (run / "precious.txt").write_text("results of a week")
    before = _snapshot(run)
    res = _gangaps("run", str(ROOT / "configs" / "mnist-dcgan.yaml"), *args, "--out", str(run),
                   "--data-root", str(data_root), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gangaps: error:"), res.stderr
    assert "Traceback" not in res.stderr
    assert _snapshot(run) == before


def test_missing_data_stops_before_anything_is_written(tmp_path):
    res = _gangaps("demo", "--out", str(tmp_path / "new"), "--data-root", str(tmp_path / "nope"),
                   cwd=tmp_path)
    assert res.returncode == 2
    assert "MNIST idx files not found" in res.stderr
    assert not (tmp_path / "new").exists()
