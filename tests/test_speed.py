"""Peak FLOP/s for MFU: device names matched as whole words, a variant before its family,
the dtype the networks really compute in, and every rank's device under torchrun."""

from __future__ import annotations

import pytest
import torch

from gangaps.config import GANConfig
from gangaps.errors import UserError
from gangaps.train.family import get_family
from gangaps.train.speed import PEAK_ENV, computes_in_bf16, device_peak, peak_flops


@pytest.mark.parametrize(("name", "bf16", "tf32"), [
    ("NVIDIA H100 80GB HBM3", 989e12, 495e12),  # SXM
    ("NVIDIA H100 PCIe", 756e12, 378e12),  # not SXM's peak
    ("NVIDIA H100 NVL", 835e12, 418e12),
    ("NVIDIA H200", 989e12, 495e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
    ("NVIDIA A100 80GB PCIe", 312e12, 156e12),
    ("NVIDIA L40S", 362e12, 183e12),
    ("NVIDIA L40", 181e12, 90.5e12),  # not L4's
    ("NVIDIA L4", 121e12, 60e12),
    ("NVIDIA A10", 125e12, 62.5e12),
    ("NVIDIA GeForce RTX 4090", 165e12, 82.6e12),
])
def test_device_names_match_whole_words_in_order(name, bf16, tf32):
    assert device_peak(name, bf16=True) == bf16 and device_peak(name, bf16=False) == tf32


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla T4", "NVIDIA GeForce RTX 4080"])
def test_unknown_devices_get_no_peak_rather_than_a_wrong_one(name):
    assert device_peak(name, bf16=True) is None


def test_the_dtype_is_the_one_the_networks_compute_in():
    dcgan, sg2 = get_family("dcgan"), get_family("stylegan2")
    assert not computes_in_bf16(dcgan, GANConfig())
    assert computes_in_bf16(dcgan, GANConfig(bf16=True))
    # StyleGAN2 runs in bf16 by its own mixed_precision option, with gan.bf16 off
    assert computes_in_bf16(sg2, GANConfig(family="stylegan2"))
    assert not computes_in_bf16(sg2, GANConfig(family="stylegan2",
                                               options={"mixed_precision": "none"}))


def test_injected_peak_counts_every_rank(monkeypatch):
    cpu = torch.device("cpu")
    assert peak_flops(cpu, bf16=False) is None  # no table entry off CUDA
    monkeypatch.setenv(PEAK_ENV, "2.5e12")
    assert peak_flops(cpu, bf16=False) == 2.5e12
    assert peak_flops(cpu, bf16=True, world=4) == 10e12
    monkeypatch.setenv(PEAK_ENV, "fast")
    with pytest.raises(UserError, match=PEAK_ENV):
        peak_flops(cpu, bf16=False)
