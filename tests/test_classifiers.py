"""GAN-classifier zoo: shapes, gradients through frozen models, freeze semantics, local
weights, option validation, and that the light architectures can actually learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gangaps.errors import UserError
from gangaps.models.classifier_zoo import LogSpectrum, default_resnet_input_size
from gangaps.models.classifiers import ARCHITECTURES, GANClassifier, build_classifier, freeze

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest.one_thread)

ARCHS = sorted(ARCHITECTURES)
# Small widths where an architecture has one, to keep the suite fast on 2 shared cores.
SMALL = {"small_cnn": {"width": 8}, "patch": {"width": 8}, "spectrum": {"width": 8},
         "dcgan_d": {"width": 8}}


def _x(n: int, c: int, s: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _build(arch: str, c: int, s: int, **options) -> GANClassifier:
    torch.manual_seed(0)
    return build_classifier(arch, c, s, **{**SMALL.get(arch, {}), **options})


def test_all_expected_architectures_registered():
    assert {"small_cnn", "resnet18", "resnet50", "patch", "spectrum", "dcgan_d"} <= set(ARCHS)


CASES = [(arch, shape) for arch in ARCHS for shape in ((1, 28), (3, 64))
         if (arch, shape) != ("resnet50", (1, 28))]  # resnet50: one 64 px case is enough


@pytest.mark.parametrize("arch, shape", CASES, ids=[f"{a}-{c}x{s}" for a, (c, s) in CASES])
def test_logits_shape_and_input_gradient_through_frozen_model(arch, shape):
    c, s = shape
    model = freeze(_build(arch, c, s))
    x = _x(2, c, s).requires_grad_()
    logits = model(x)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


# resnet50 shares resnet18's code path and BN handling; leaving it out saves ~10 s.
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "resnet50"])
def test_freeze_no_grads_eval_mode_deterministic_and_batch_independent(arch):
    model = _build(arch, 1, 28)
    model.train()
    assert freeze(model) is model
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())  # BN and dropout in eval
    x = _x(2, 1, 28, seed=1)
    with torch.no_grad():
        batch = model(x)
        again = model(x)
        one_by_one = torch.cat([model(x[i:i + 1]) for i in range(2)])
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch, one_by_one, atol=1e-5, rtol=1e-5)


def test_batchnorm_running_stats_are_used_after_freeze():
    """A model with trained BN statistics: frozen outputs must use them, not batch stats."""
    model = _build("resnet18", 3, 32)
    with torch.no_grad():  # a few train-mode passes move the running statistics
        model(_x(4, 3, 32, seed=10) * 0.3 + 0.2)
    assert model.net.bn1.running_mean.abs().sum() > 0
    freeze(model)
    x = _x(2, 3, 32, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.cat([model(x[i:i + 1]) for i in range(2)]),
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- ResNets


def test_resnet_default_input_size():
    assert default_resnet_input_size(28) == 56  # integer factor, leaves a 2×2 final map
    assert default_resnet_input_size(32) == 64
    assert default_resnet_input_size(48) == 96
    assert default_resnet_input_size(64) is None and default_resnet_input_size(256) is None
    assert _build("resnet18", 1, 28).preprocess(_x(1, 1, 28)).shape == (1, 3, 56, 56)
    assert _build("resnet18", 3, 64).preprocess(_x(1, 3, 64)).shape == (1, 3, 64, 64)
    custom = _build("resnet18", 1, 28, input_size=112)
    assert custom.preprocess(_x(1, 1, 28)).shape == (1, 3, 112, 112)


def test_resnet_preprocess_is_imagenet_normalisation_of_gray_repeated():
    model = _build("resnet18", 1, 64)
    x = _x(1, 1, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.preprocess(x), ((x.repeat(1, 3, 1, 1) + 1) / 2 - mean) / std)


def test_resnet_head_is_single_logit_with_small_normal_init():
    model = _build("resnet50", 3, 64)
    fc = model.net.fc
    assert fc.out_features == 1 and fc.in_features == 2048
    assert 0.01 < fc.weight.std().item() < 0.03 and torch.all(fc.bias == 0)


@pytest.mark.parametrize("stem, conv_stride, layer4_side", [("no_downsample", 1, 4), ("no_maxpool", 2, 2)])
def test_resnet_stems_keep_resolution(stem, conv_stride, layer4_side):
    model = _build("resnet18", 1, 28, stem=stem)
    assert model.net.conv1.stride == (conv_stride, conv_stride)
    assert isinstance(model.net.maxpool, nn.Identity)
    assert model.preprocess(_x(1, 1, 28)).shape[-1] == 28  # no interpolation by default
    feats = {}
    model.net.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("l4", o))
    freeze(model)(_x(1, 1, 28))
    assert feats["l4"].shape[-1] == layer4_side  # total stride 8 / 16 instead of 32
    default = _build("resnet18", 1, 28)
    assert default.net.conv1.stride == (2, 2) and isinstance(default.net.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("arch, stem, numel", [("resnet18", "imagenet", 512 * 2 * 2),
                                                ("resnet18", "no_maxpool", 512 * 4 * 4),
                                                ("resnet50", "imagenet", 2048 * 2 * 2)])
def test_resnet_flatten_head_sees_the_whole_last_map(arch, stem, numel):
    model = _build(arch, 3, 64, stem=stem, pool="flatten")
    assert model.net.fc.in_features == numel and model.input_size == 64
    # Every input is resized to the build side, so a training crop still fits the fc.
    assert model.preprocess(_x(2, 3, 56)).shape[-1] == 64
    x = _x(2, 3, 64).requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resnet_never_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    _build("resnet18", 3, 64)
    _build("resnet50", 3, 64)


@pytest.mark.parametrize("wrap", ["plain", "model", "module_prefix"])
def test_resnet_weights_path_loads_backbone_and_keeps_new_head(tmp_path, wrap):
    torch.manual_seed(123)
    source = torchvision.models.resnet18()  # stands in for an ImageNet checkpoint
    sd = source.state_dict()
    if wrap == "model":
        sd = {"model": sd}  # CNNDetection's checkpoint layout
    elif wrap == "module_prefix":
        sd = {f"module.{k}": v for k, v in sd.items()}  # DataParallel
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(sd, path)
    for stem in ("imagenet", "no_downsample"):
        model = _build("resnet18", 3, 64, weights_path=str(path), stem=stem)
        loaded = model.net.state_dict()
        for key, value in source.state_dict().items():
            if not key.startswith("fc."):
                assert torch.equal(loaded[key], value), key
        assert model.net.fc.weight.shape == (1, 512)
    scratch = _build("resnet18", 3, 64)
    assert not torch.equal(scratch.net.conv1.weight, source.conv1.weight)


def test_resnet_weights_path_errors(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        _build("resnet18", 3, 64, weights_path=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit"):
        _build("resnet50", 3, 64, weights_path=str(wrong))
    partial = tmp_path / "partial.pth"
    sd = torchvision.models.resnet18().state_dict()
    del sd["layer4.1.bn2.weight"]
    torch.save(sd, partial)
    with pytest.raises(UserError, match="missing"):
        _build("resnet18", 3, 64, weights_path=str(partial))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load"):
        _build("resnet18", 3, 64, weights_path=str(garbage))


# --------------------------------------------------------------------------- patch, spectrum, D


def test_patch_receptive_field_is_local():
    depth = 3
    model = freeze(_build("patch", 1, 28, depth=depth))
    per_location = model.net[:-1]  # everything but the average over locations
    x = _x(1, 1, 28)
    y = x.clone()
    y[..., 14, 14] += 1.0
    with torch.no_grad():
        diff = (per_location(y) - per_location(x)).abs()[0, 0]
    changed = diff > 0
    rows, cols = changed.nonzero(as_tuple=True)
    # Unpadded convs: map index i covers input rows i..i+2·depth, so pixel 14 reaches i∈[8, 14].
    assert changed.any()
    assert rows.min() >= 14 - 2 * depth and rows.max() <= 14
    assert cols.min() >= 14 - 2 * depth and cols.max() <= 14
    assert diff.shape == (28 - 2 * depth, 28 - 2 * depth)


def test_patch_logit_is_mean_of_location_logits():
    model = freeze(_build("patch", 3, 32))
    x = _x(2, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net[:-1](model.preprocess(x)).mean((1, 2, 3)))


def test_spectrum_is_shift_invariant_and_contrast_normalised():
    model = freeze(_build("spectrum", 3, 32))
    x = _x(2, 3, 32) * 0.5
    shifted = torch.roll(x, shifts=(5, -3), dims=(-2, -1))  # |FFT| ignores circular shifts
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(shifted), atol=1e-4, rtol=1e-4)
        s = LogSpectrum(gray=False)(x)
    assert s.shape == (2, 3, 32, 32)
    torch.testing.assert_close(s.mean((1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std((1, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)
    assert LogSpectrum(gray=True)(x).shape == (2, 1, 32, 32)


def test_spectrum_linear_head_and_gray_option():
    model = freeze(_build("spectrum", 3, 32, head="linear", gray=True))
    assert model.net[1][1].in_features == 32 * 32
    x = _x(2, 3, 24).requires_grad_()  # other sizes are resized to the build resolution
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dcgan_d_matches_paper_architecture():
    model = build_classifier("dcgan_d", 1, 28)
    convs = [m for m in model.net if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (64, (5, 5), (2, 2)), (128, (5, 5), (2, 2))]
    assert [m.p for m in model.net if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    assert isinstance(model.net[-1], nn.Linear) and model.net[-1].in_features == 128 * 7 * 7
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# ------------------------------------------------------------------------------------ errors


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="unknown classifier arch"):
        build_classifier("vit_huge", 3, 64)


@pytest.mark.parametrize("arch, options", [
    ("resnet18", {"pretrained": True}),
    ("patch", {"kernel": 5}),
    ("resnet18", {"stem": "bogus"}),
    ("resnet50", {"input_size": 0}),
    ("resnet18", {"input_size": "64"}),
    ("patch", {"depth": 0}),
    ("patch", {"depth": 12}),
    ("patch", {"width": True}),
    ("spectrum", {"head": "mlp"}),
    ("spectrum", {"gray": "yes"}),
    ("dcgan_d", {"width": -1}),
])
def test_bad_options_are_user_errors(arch, options):
    with pytest.raises(UserError, match=arch):
        build_classifier(arch, 3, 64, **options)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "small_cnn"])  # any channel count
def test_bad_data_shape_is_user_error(arch):
    with pytest.raises(UserError):
        build_classifier(arch, 2, 64)
    with pytest.raises(UserError):
        build_classifier(arch, 1, 0)


def test_patch_needs_images_larger_than_its_receptive_field():
    with pytest.raises(UserError, match="resolution"):
        build_classifier("patch", 1, 8, depth=4)


# ------------------------------------------------------------------------- learning sanity


def _easy_pair(n: int, seed: int, s: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """real: smooth random images; fake: other smooth images plus a faint checkerboard."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(2 * n, 1, 4, 4, generator=g) * 1.6 - 0.8, size=(s, s),
                           mode="bilinear", align_corners=False)
    i = torch.arange(s)
    checker = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float()
    return smooth[:n], smooth[n:] + 0.1 * checker


@pytest.mark.parametrize("arch", ["small_cnn", "patch", "spectrum"])
def test_learns_easy_real_vs_fake(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, 1, 16, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    real, fake = _easy_pair(512, seed=0)
    target = torch.cat([torch.ones(32), torch.zeros(32)])
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randint(0, 512, (2, 32), generator=g)
        loss = F.binary_cross_entropy_with_logits(
            model(torch.cat([real[idx[0]], fake[idx[1]]])), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real_test, fake_test = _easy_pair(256, seed=1)
    freeze(model)
    with torch.no_grad():
        acc = 0.5 * ((model(real_test) > 0).float().mean() + (model(fake_test) <= 0).float().mean())
    assert acc > 0.9
