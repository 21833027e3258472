"""`deterministic: true`: on CUDA only deterministic kernels, no cuDNN autotuning and a fixed
cuBLAS workspace. The torch switches are process flags that exist without a GPU, so the CUDA
branch of configure_device runs here; the CPU path is left exactly as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gangaps.config import load_config
from gangaps.experiment import runner as runner_module
from gangaps.experiment.jobs import configure_device
from gangaps.experiment.runner import Runner
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def torch_flags(monkeypatch):
    """The process-wide flags as they were, restored after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0])
    (cudnn.benchmark, cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
     cudnn.allow_tf32) = saved[1:]


def _flags() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_cuda_branch_sets_the_deterministic_switches(torch_flags):
    configure_device(torch.device("cuda"))  # the default: autotuned, as fast as it goes
    assert _flags() == (False, True, False, None)
    configure_device(torch.device("cuda"), deterministic=True)
    assert _flags() == (True, False, True, ":4096:8")
    assert torch.backends.cuda.matmul.allow_tf32  # TF32 is deterministic: it stays


def test_cpu_is_left_as_it_was(torch_flags):
    before = _flags()
    configure_device(torch.device("cpu"), deterministic=True)
    assert _flags() == before


def test_the_config_key_reaches_configure_device(torch_flags, data_root, tmp_path, monkeypatch):
    seen = []
    real = runner_module.configure_device

    def spy(device: torch.device, deterministic: bool = False) -> None:  # records, then runs it
        seen.append((device.type, deterministic))
        real(device, deterministic)

    monkeypatch.setattr(runner_module, "configure_device", spy)
    over = tiny_overrides(**{"data.path": str(data_root), "device": "cpu"})
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml", [*over, "deterministic=true"])
    r = Runner(cfg, tmp_path / "run", progress=False)
    r.store.release()
    assert seen == [("cpu", True)]
    # how kernels run is not part of the run, like device: resuming without it is accepted
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml", over)
    Runner(cfg, tmp_path / "run", progress=False).store.release()
    assert seen[-1] == ("cpu", False)
