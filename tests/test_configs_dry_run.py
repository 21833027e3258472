"""Every shipped config passes `gangaps run FILE --dry-run`; Inception weights: null = fetched.

`evaluation.inception_weights: null` means torch-fidelity's standard file, downloaded once into
the torch hub cache where torch-fidelity keeps it; a dry run downloads nothing; no network is one
line (exit 2) naming the URL and the `=FILE` alternative; a local file is used as given.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gangaps import cli
from gangaps.metrics import inception

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src" / "gangaps" / "configs" /
                                                        "demo.yaml"]
WEIGHTS_NAME = inception.WEIGHTS_URL.rsplit("/", 1)[-1]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCH_HOME": str(tmp_path / "th")}


def test_the_folder_has_the_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"mnist-dcgan.yaml", "ffhq-stylegan2-64.yaml", "ffhq-stylegan2-256.yaml",
            "demo.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_dry_runs(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "gangaps.cli", "run", str(config), "--out",
                           str(out), "--dry-run"], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "evaluation:" in proc.stdout and "inception_weights" in proc.stdout
    assert not out.exists()  # a dry run writes nothing
    assert not (tmp_path / "th").exists()  # and downloads nothing


def _refused_url() -> str:
    """An address that refuses at once: the real download code, no network needed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    return f"http://127.0.0.1:{port}/{WEIGHTS_NAME}"


def _github_reachable() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _metrics_cmd(tmp_path: Path, *extra: str) -> list[str]:
    a, b = tmp_path / "a", tmp_path / "b"
    from PIL import Image
    for d in (a, b):
        d.mkdir(exist_ok=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 60, 10, 10)).save(d / f"{i}.png")
    return ["metrics", str(a), "--reference", str(b), "--metrics", "fid",
            "--out", str(tmp_path / "m.json"), *extra]


def test_no_network_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(inception, "WEIGHTS_URL", _refused_url())
    t0 = time.perf_counter()
    rc = cli.main(_metrics_cmd(tmp_path))
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - t0 < 30
    assert err.count("\n") == 1 and err.startswith("gangaps: error: cannot download")
    assert inception.CONFIG_KEY + "=FILE" in err and "127.0.0.1" in err
    assert not (tmp_path / "th" / "hub" / "checkpoints" / WEIGHTS_NAME).exists()  # no stub left


@pytest.mark.skipif(_github_reachable(), reason="this machine can reach github.com")
def test_real_download_without_network_fails_fast(tmp_path: Path) -> None:
    """The real URL on a machine without network (as the test machines are)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gangaps.cli", *_metrics_cmd(tmp_path)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2 and time.perf_counter() - t0 < 60
    assert proc.stderr.count("\n") == 1 and inception.WEIGHTS_URL in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cached_download_is_used_and_a_local_file_preferred(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(inception, "WEIGHTS_URL", _refused_url())  # a download would fail
    cached = tmp_path / "th" / "hub" / "checkpoints" / WEIGHTS_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert inception.resolve_weights(None) == cached  # found where torch-fidelity keeps it
    local = tmp_path / "mine.pth"
    local.write_bytes(b"y")
    assert inception.resolve_weights(str(local)) == local
    with pytest.raises(inception.UserError, match="not found"):
        inception.resolve_weights(str(tmp_path / "missing.pth"))
