"""StyleGAN2 networks: exactness against NVIDIA's reference outputs, parameter counts,
FIR ops against a direct upfirdn2d reference, importer errors, gradients, autocast."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gangaps.errors import UserError
from gangaps.models import stylegan2_ops as ops
from gangaps.models.stylegan2 import (
    Discriminator,
    Generator,
    convert_nvidia_files,
    import_nvidia,
    load_converted,
)

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "stylegan2_reference"
needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "config.json").is_file(),
    reason=f"NVIDIA StyleGAN2 reference fixture not found at {FIXTURE}",
)


def _load(name: str):
    return torch.load(FIXTURE / name, weights_only=True)


@pytest.fixture(scope="module")
def nvidia():
    cfg = json.loads((FIXTURE / "config.json").read_text())
    g_sd, d_sd = _load("G_state_dict.pt"), _load("D_state_dict.pt")
    G, D = import_nvidia(g_sd, d_sd, **cfg)
    return cfg, g_sd, d_sd, G, D, _load("reference_io.pt")


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> float:
    """max|a-b| / max|b| < rel, and elementwise |a-b| <= rel * max|b| + 1e-5."""
    assert a.shape == b.shape and a.dtype == b.dtype
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err < rel, f"max relative error {err:.3g} >= {rel}"
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * b.abs().max().item() + 1e-5)
    return err


# ----------------------------------------------------------------------------- exactness


@needs_fixture
@pytest.mark.parametrize("fused_modconv", [False, True])
def test_matches_nvidia_reference_outputs(nvidia, fused_modconv):
    _, _, _, G, D, ref = nvidia
    with torch.no_grad():
        assert_close_rel(G.mapping(ref["z"]), ref["ws"])
        img = G.synthesis(ref["ws"], noise_mode="const", fused_modconv=fused_modconv)
        assert_close_rel(img, ref["img"])
        assert_close_rel(G.mapping(ref["z"], truncation_psi=0.7), ref["ws_trunc07"])
        img07 = G.synthesis(ref["ws_trunc07"], noise_mode="const", fused_modconv=fused_modconv)
        assert_close_rel(img07, ref["img_trunc07"])
        # End to end from z, and D on NVIDIA's image.
        assert_close_rel(G(ref["z"], noise_mode="const", fused_modconv=fused_modconv), ref["img"])
        assert_close_rel(D(ref["img"]), ref["d_logits"])


@needs_fixture
def test_state_dict_names_are_nvidias(nvidia):
    _, g_sd, d_sd, G, D, _ = nvidia
    assert set(G.state_dict()) == set(g_sd) and set(D.state_dict()) == set(d_sd)
    assert G.num_ws == nvidia[5]["ws"].shape[1]


# ----------------------------------------------------------------------------- sizes


def _nvidia_param_counts(res, cbase, cmax=512, map_layers=8, z=512, w=512, c=3):
    """Parameter counts from the layer shapes in NVIDIA's training/networks.py
    (FullyConnectedLayer, SynthesisLayer, ToRGBLayer, Conv2dLayer, DiscriminatorEpilogue),
    written independently of our modules."""
    ch = lambda r: min(cbase // r, cmax)  # noqa: E731
    feats = [z] + [w] * map_layers
    g = sum(feats[i] * feats[i + 1] + feats[i + 1] for i in range(map_layers))
    # SynthesisLayer: affine (w_dim -> in), weight, noise_strength, bias.
    layer = lambda i, o: (w * i + i) + o * i * 9 + 1 + o  # noqa: E731
    torgb = lambda i: (w * i + i) + c * i + c  # noqa: E731
    for r in [2**k for k in range(2, res.bit_length())]:
        if r == 4:
            g += ch(4) * 16 + layer(ch(4), ch(4))  # const input + conv1
        else:
            g += layer(ch(r // 2), ch(r)) + layer(ch(r), ch(r))
        g += torgb(ch(r))
    conv = lambda i, o, k, bias=True: i * o * k * k + (o if bias else 0)  # noqa: E731
    d = conv(c, ch(res), 1)  # fromrgb at the top
    for r in [2**k for k in range(res.bit_length() - 1, 2, -1)]:
        d += conv(ch(r), ch(r), 3) + conv(ch(r), ch(r // 2), 3) + conv(ch(r), ch(r // 2), 1, False)
    d += conv(ch(4) + 1, ch(4), 3) + ch(4) * 16 * ch(4) + ch(4) + ch(4) + 1
    return g, d


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_nvidia():
    # Config-F (1024 px, channel_base 32768, channel_max 512, 8 mapping layers, z/w 512).
    # NVIDIA's own module summary (torch_utils/misc.print_module_summary, printed by
    # stylegan2-ada-pytorch train.py at 1024x1024, cfg=auto, which has 2 mapping layers)
    # reads: G total 28,794,124 params / 2,797,104 buffers; D total 29,012,513 params /
    # 544 buffers. With 8 mapping layers G adds 6 x 262,656 -> 30,370,060, which is also
    # the total of the official TF StyleGAN2 config-f G (print_layers).
    assert _nvidia_param_counts(1024, 32768) == (30_370_060, 29_012_513)
    assert _nvidia_param_counts(1024, 32768, map_layers=2)[0] == 28_794_124
    G = Generator(512, 512, 1024, 3, mapping_layers=8, channel_base=32768, channel_max=512)
    D = Discriminator(1024, 3, channel_base=32768, channel_max=512)
    assert (_count(G), _count(D)) == (30_370_060, 29_012_513)
    assert sum(b.numel() for b in G.buffers()) == 2_797_104
    assert sum(b.numel() for b in D.buffers()) == 544
    del G, D
    # paper256 (256 px, fmaps 0.5 -> channel_base 16384, channel_max 512, map 8): the same
    # NVIDIA layer arithmetic (validated above against NVIDIA's printed summary).
    assert _nvidia_param_counts(256, 16384) == (24_767_458, 24_001_089)
    G = Generator(512, 512, 256, 3, mapping_layers=8, channel_base=16384, channel_max=512)
    D = Discriminator(256, 3, channel_base=16384, channel_max=512)
    assert (_count(G), _count(D)) == (24_767_458, 24_001_089)
    assert G.num_ws == 14


# ----------------------------------------------------------------------------- FIR ops


def _upfirdn2d_direct(x, f, up=1, down=1, pad=(0, 0), gain=1.0):
    """upfirdn2d by definition: insert up-1 zeros after each pixel, pad (pad0 before,
    pad1 after), convolve with f*gain (true convolution), keep every down-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def test_fir_resampling_matches_upfirdn2d_definition():
    torch.manual_seed(0)
    f = ops.setup_fir_filter()
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    f64 = f.double()
    torch.testing.assert_close(
        ops.upsample2d(x, f64), _upfirdn2d_direct(x, f64, up=2, pad=(2, 1), gain=4)
    )
    torch.testing.assert_close(
        ops.downsample2d(x, f64), _upfirdn2d_direct(x, f64, down=2, pad=(1, 1))
    )
    w3 = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    w1 = torch.randn(7, 5, 1, 1, dtype=torch.float64)
    # up=2, 3x3 (NVIDIA: flip_weight=False): up-filter with padding (3, 2), then conv by w.
    want = F.conv2d(_upfirdn2d_direct(x, f64, up=2, pad=(3, 2), gain=4), w3.flip([2, 3]))
    torch.testing.assert_close(ops.conv2d_resample(x, w3, f64, up=2), want)
    # down=2, 3x3 (NVIDIA's generic path): pad 2, conv by w, then down-filter unpadded.
    want = _upfirdn2d_direct(F.conv2d(F.pad(x, [2, 2, 2, 2]), w3), f64, down=2)
    torch.testing.assert_close(ops.conv2d_resample(x, w3, f64, down=2), want)
    # 1x1 with resampling.
    torch.testing.assert_close(
        ops.conv2d_resample(x, w1, f64, up=2),
        _upfirdn2d_direct(F.conv2d(x, w1), f64, up=2, pad=(2, 1), gain=4),
    )
    torch.testing.assert_close(
        ops.conv2d_resample(x, w1, f64, down=2),
        _upfirdn2d_direct(F.conv2d(x, w1), f64, down=2, pad=(1, 1)),
    )


def test_fused_and_unfused_modconv_agree():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    s = torch.randn(3, 6, dtype=torch.float64)
    f = ops.setup_fir_filter().double()
    for up in (1, 2):
        a = ops.modulated_conv2d(x, w, s, up=up, resample_filter=f, fused=False)
        b = ops.modulated_conv2d(x, w, s, up=up, resample_filter=f, fused=True)
        # NVIDIA's definition: per-sample weights, demodulated, grouped conv.
        ww = w[None] * s[:, None, :, None, None]
        ww = ww * (ww.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
        want = torch.cat([ops.conv2d_resample(x[i : i + 1], ww[i], f, up=up) for i in range(3)])
        torch.testing.assert_close(a, want)
        torch.testing.assert_close(b, want)


# ----------------------------------------------------------------------------- importer


def _tiny_cfg(**kw):
    cfg = dict(z_dim=16, w_dim=16, img_resolution=16, img_channels=1, mapping_layers=2,
               channel_base=256, channel_max=32, g_architecture="skip",
               d_architecture="resnet", mbstd_group_size=4)
    cfg.update(kw)
    return cfg


def _tiny_nets(cfg):
    G = Generator(cfg["z_dim"], cfg["w_dim"], cfg["img_resolution"], cfg["img_channels"],
                  cfg["mapping_layers"], cfg["channel_base"], cfg["channel_max"],
                  architecture=cfg["g_architecture"])
    D = Discriminator(cfg["img_resolution"], cfg["img_channels"], cfg["channel_base"],
                      cfg["channel_max"], architecture=cfg["d_architecture"],
                      mbstd_group_size=cfg["mbstd_group_size"])
    return G, D


def test_import_rejects_mismatches_with_user_error():
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    G, D = _tiny_nets(cfg)
    g_sd, d_sd = G.state_dict(), D.state_dict()
    G2, _ = import_nvidia(g_sd, d_sd, **cfg)  # a consistent pair loads
    torch.testing.assert_close(G2.mapping.fc0.weight, G.mapping.fc0.weight)

    missing = {k: v for k, v in g_sd.items() if k != "synthesis.b8.conv0.affine.bias"}
    with pytest.raises(UserError, match="missing.*synthesis.b8.conv0.affine.bias"):
        import_nvidia(missing, d_sd, **cfg)
    with pytest.raises(UserError, match="unexpected.*b4.extra"):
        import_nvidia(g_sd, {**d_sd, "b4.extra": torch.zeros(1)}, **cfg)
    shape_msg = r"shape mismatch at 'synthesis.b4.const'.*\[32, 4, 4\].*\[16, 4, 4\]"
    with pytest.raises(UserError, match=shape_msg):
        import_nvidia(g_sd, d_sd, **_tiny_cfg(channel_max=16))
    with pytest.raises(UserError, match="missing.*mapping.fc2"):
        import_nvidia(g_sd, d_sd, **_tiny_cfg(mapping_layers=3))
    with pytest.raises(UserError, match="img_resolution"):
        import_nvidia(g_sd, d_sd, **{k: v for k, v in cfg.items() if k != "img_resolution"})
    bad_filter = dict(d_sd, **{"b16.resample_filter": torch.ones(4, 4) / 16})
    with pytest.raises(UserError, match="FIR"):
        import_nvidia(g_sd, bad_filter, **cfg)
    with pytest.warns(UserWarning, match="num_fp16_res"):
        import_nvidia(g_sd, d_sd, **cfg, num_fp16_res=4)
    # Shape-derived settings: no noise inputs, 2 mbstd channels, conv clamping accepted.
    G3 = Generator(16, 16, 16, 1, 2, 256, 32, use_noise=False)
    D3 = Discriminator(16, 1, 256, 32, mbstd_num_channels=2)
    G4, D4 = import_nvidia(G3.state_dict(), D3.state_dict(), **cfg, conv_clamp=256)
    assert not hasattr(G4.synthesis.b8.conv0, "noise_const") and D4.b4.mbstd_num_channels == 2
    z = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(G4(z), G3(z))
        torch.testing.assert_close(D4(G3(z)), D3(G3(z)))


@needs_fixture
def test_convert_files_roundtrip(nvidia, tmp_path):
    *_, G, D, ref = nvidia
    out = convert_nvidia_files(FIXTURE / "G_state_dict.pt", FIXTURE / "D_state_dict.pt",
                               FIXTURE / "config.json", tmp_path / "sg2.safetensors")
    G2, D2 = load_converted(out)
    with torch.no_grad():
        torch.testing.assert_close(G2.synthesis(ref["ws"], noise_mode="const"),
                                   G.synthesis(ref["ws"], noise_mode="const"), rtol=0, atol=0)
        torch.testing.assert_close(D2(ref["img"]), D(ref["img"]), rtol=0, atol=0)
    with pytest.raises(UserError, match="not found"):
        convert_nvidia_files(tmp_path / "nope.pt", FIXTURE / "D_state_dict.pt",
                             FIXTURE / "config.json", tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize(("g_arch", "d_arch"), [("skip", "resnet"), ("orig", "skip"),
                                                ("resnet", "orig")])
def test_forward_and_gradients_flow_to_g(g_arch, d_arch):
    torch.manual_seed(0)
    G, D = _tiny_nets(_tiny_cfg(img_resolution=16, g_architecture=g_arch, d_architecture=d_arch))
    z = torch.randn(6, 16)  # 6 is not a multiple of the mbstd group size 4
    img = G(z)
    assert img.shape == (6, 1, 16, 16) and img.dtype == torch.float32
    logits = D(img)
    assert logits.shape == (6, 1)
    F.softplus(-logits).mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches G.{name}"
    assert D(img[:2].detach()).shape == (2, 1)  # batch smaller than the group


def test_w_avg_update_and_truncation():
    torch.manual_seed(0)
    G, _ = _tiny_nets(_tiny_cfg())
    z = torch.randn(5, 16)
    ws = G.mapping(z)
    assert ws.shape == (5, G.num_ws, 16) and G.mapping.w_avg.abs().sum() == 0
    G.mapping(z, update_w_avg=True)
    torch.testing.assert_close(G.mapping.w_avg, ws[:, 0].mean(0) * (1 - 0.995))
    wt = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(wt[:, :2], G.mapping.w_avg + 0.5 * (ws[:, :2] - G.mapping.w_avg))
    torch.testing.assert_close(wt[:, 2:], ws[:, 2:])
    a = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(a, G.synthesis(ws, noise_mode="const"), rtol=0, atol=0)
    assert G.synthesis(ws, noise_mode="none").shape == a.shape


def test_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    G, D = _tiny_nets(_tiny_cfg(img_channels=3, img_resolution=16))
    z = torch.randn(4, 16)
    with torch.no_grad():
        ref_img = G(z, noise_mode="const")
        ref_logits = D(ref_img)
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
        torch.testing.assert_close(G(z, noise_mode="const"), ref_img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(D(ref_img.to(memory_format=torch.channels_last)), ref_logits,
                                   rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU autocast may warn about unsupported ops
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ws = G.mapping(z, update_w_avg=True)
            img = G.synthesis(ws, noise_mode="const")
            logits = D(img)
    assert ws.dtype == img.dtype == logits.dtype == torch.float32
    assert G.mapping.w_avg.dtype == torch.float32
    assert torch.isfinite(logits).all()
    scale = ref_img.abs().max()
    assert (img - ref_img).abs().max() < 0.1 * scale, "bf16 image far from float32 image"


def test_double_backward_for_r1_and_path_length():
    torch.manual_seed(0)
    G, D = _tiny_nets(_tiny_cfg())
    real = torch.randn(4, 1, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)  # R1 penalty
    g.square().sum().backward()
    assert D.b16.conv0.weight.grad is not None and D.b16.conv0.weight.grad.abs().sum() > 0
    ws = G.mapping(torch.randn(4, 16)).detach().requires_grad_(True)  # path length
    img = G.synthesis(ws)
    (gw,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    gw.square().sum().backward()
    assert G.synthesis.b16.conv1.weight.grad.abs().sum() > 0
