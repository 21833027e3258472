"""The one GAN loop on real MNIST: it learns, it resumes exactly, and the fool term works."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from gangaps.config import load_config
from gangaps.data import load_real, to_model_range
from gangaps.generators import generate, load_generator
from gangaps.io import load_state
from gangaps.models.classifiers import build_classifier, freeze
from gangaps.train.fool import FoolSchedule, FoolTerm, quantize_straight_through
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


def _cfg(data_root, **extra):
    return load_config(None, tiny_overrides(**{"data.path": str(data_root), **extra}))


def _real(cfg):
    return load_real(cfg.data).gan_train[:4000]


def test_dcgan_learns_on_mnist(tmp_path, data_root):
    cfg = _cfg(data_root, **{"gan.kimg": 6})
    train_generator(GeneratorJob(tmp_path, seed=3), cfg, _real(cfg), CPU, progress=False)
    G = load_generator(tmp_path / CHECKPOINT)
    x = generate(G, 256, seed=0).float() / 255
    untrained = generate(load_generator_untrained(cfg), 256, seed=0).float() / 255
    real = _real(cfg)[:256].float() / 255
    # MNIST is mostly black background with bright strokes: the trained generator's pixel
    # histogram must move towards it from the untrained generator's grey mush.
    def gap(a):
        return abs(a.mean() - real.mean()) + abs((a > 0.5).float().mean() - (real > 0.5).float().mean())
    assert gap(x) < 0.5 * gap(untrained)
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(log) >= 4 and '"img_per_s"' in log[-1]


def load_generator_untrained(cfg):
    from gangaps.train.family import get_family
    G = get_family("dcgan").build(cfg.gan, 1, 28)["G"].eval()
    G.z_dim = cfg.gan.z_dim
    return G


def test_killed_training_resumes_to_identical_weights(tmp_path, data_root):
    cfg = _cfg(data_root)
    real = _real(cfg)
    full, part = tmp_path / "full", tmp_path / "part"
    train_generator(GeneratorJob(full, seed=5), cfg, real, CPU, progress=False)
    # the "killed" run: same job stopped after its first checkpoint (0.5 kimg of 2)
    short = cfg.model_copy(deep=True)
    short.gan.kimg = 0.75
    train_generator(GeneratorJob(part, seed=5), short, real, CPU, progress=False)
    shutil.copy(part / CHECKPOINT, part / "at_kill.safetensors")
    state = load_state(part / CHECKPOINT)
    assert 0 < state["step"] < 2000 / 32
    train_generator(GeneratorJob(part, seed=5), cfg, real, CPU, progress=False)
    a, b = load_state(full / CHECKPOINT), load_state(part / CHECKPOINT)
    assert a["step"] == b["step"]
    for k in a["nets"]:
        assert torch.equal(a["nets"][k], b["nets"][k]), k


def test_fool_term_reaches_generator_through_frozen_classifier():
    torch.manual_seed(0)
    clf = build_classifier("small_cnn", 1, 28, width=8)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    fool = FoolTerm([clf], FoolSchedule(lam=2.0, start=4, ramp=10))
    G = torch.nn.Sequential(torch.nn.Linear(4, 784), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 28, 28)))
    loss = fool(G(torch.randn(16, 4)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert all(p.grad is None and not p.requires_grad for p in clf.parameters())
    assert not clf.training
    s = fool.schedule
    assert s.scale(0) == s.scale(3) == s.scale(4) == 0.0
    assert s.scale(9) == 1.0 and s.scale(14) == 2.0 and s.scale(50) == 2.0
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in before.items())


def test_straight_through_quantization_matches_uint8_samples():
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    q = quantize_straight_through(x.requires_grad_())
    from gangaps.data import to_uint8
    assert torch.allclose(q, to_model_range(to_uint8(x)), atol=1e-6)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_generator_trained_against_a_classifier_fools_it(tmp_path, data_root):
    """λ·L_fool pushes G towards what the frozen classifier calls real."""
    cfg = _cfg(data_root, **{"gan.kimg": 6})
    real = _real(cfg)
    base = tmp_path / "base"
    train_generator(GeneratorJob(base, seed=1), cfg, real, CPU, progress=False)
    fakes = generate(load_generator(base / CHECKPOINT), 1000, seed=1)
    torch.manual_seed(0)
    clf = build_classifier("small_cnn", 1, 28, width=8)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(150):  # a detector of this generator's (very visible) artifacts
        idx = torch.randint(0, 1000, (64,))
        x = to_model_range(torch.cat([real[idx], fakes[idx]]))
        y = torch.cat([torch.ones(64), torch.zeros(64)])
        loss = F.binary_cross_entropy_with_logits(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze(clf)

    def detected(run_dir):
        s = generate(load_generator(run_dir / CHECKPOINT), 500, seed=9)
        return (clf(to_model_range(s)) <= 0).float().mean().item()

    plain, fooling = tmp_path / "plain", tmp_path / "fooling"
    cfg.experiment.fool_lambda = 10.0
    train_generator(GeneratorJob(plain, seed=2), cfg, real, CPU, progress=False)
    train_generator(GeneratorJob(fooling, seed=2, fool_classifiers=[clf]), cfg, real, CPU,
                    progress=False)
    assert detected(plain) > 0.8
    assert detected(fooling) < detected(plain) - 0.3
    assert '"loss_fool"' in (fooling / "log.jsonl").read_text()


def test_adaptive_weight_makes_the_fool_gradient_lambda_times_the_adversarial_one():
    """At G's last layer, w·∇L_fool has λ times the norm of ∇L_adv (below the clamp)."""
    torch.manual_seed(0)
    clf = build_classifier("small_cnn", 1, 28, width=8)
    G = torch.nn.Sequential(torch.nn.Linear(4, 784), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 28, 28)))
    last = G[0].weight
    fake = G(torch.randn(16, 4))
    adv = (fake ** 2).mean() * 1e3  # any loss of G on its own scale
    for lam, cap in ((0.5, 1e6), (0.5, 1e-3)):
        fool = FoolTerm([clf], FoolSchedule(lam=lam, adaptive=True, adaptive_max=cap))
        term, stats = fool.weighted(fake, adv, last, step=0)
        g_adv, = torch.autograd.grad(adv, last, retain_graph=True)
        g_term, = torch.autograd.grad(term, last, retain_graph=True)
        ratio = float(g_term.norm() / g_adv.norm())
        raw = float(stats["fool_weight"]) / lam  # the unclamped ratio would be far above 1e-3
        if cap > 1:
            assert abs(ratio - lam) < 1e-4 * lam
        else:
            assert raw == pytest.approx(cap) and ratio < lam / 10
    plain = FoolTerm([clf], FoolSchedule(lam=0.5))
    term, stats = plain.weighted(fake, adv, last, step=0)
    assert float(stats["fool_weight"]) == 0.5
    assert FoolTerm([clf], FoolSchedule(lam=0.5, start=3)).weighted(fake, adv, last, 2) is None


class _Brightness(torch.nn.Module):
    """A fixed 'classifier': bright images are real (logit > 0), dark ones fake."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3)) * 100


def test_controlled_weight_rises_while_detected_and_falls_while_fooling():
    """Per instance of a group: m goes up by 1/adjust_steps (log10) a step while fewer than
    the target are called real, down while more are, and stops at the clamp."""
    schedule = FoolSchedule(lam=0.1, adaptive_max=10.0, target=0.5, adjust_steps=4)
    fool = FoolTerm([_Brightness()], schedule, instances=2)
    fake = torch.stack([torch.full((8, 1, 28, 28), 0.5),    # instance 0: all called real
                        torch.full((8, 1, 28, 28), -0.5)])  # instance 1: all called fake
    weights = []
    for step in range(8):
        _, stats = fool.weighted(fake, torch.zeros(2), torch.zeros(2, 1), step)
        weights.append(stats["fool_weight"].tolist())
        assert stats["fooled"].tolist() == [1.0, 0.0]
        assert fool.fooled(fake).tolist() == [1.0, 0.0]
        fool.control(stats["fooled"])
    # the weight used at step s is λ·10^(±s/4) until the clamp at 10^±1
    for s, (w0, w1) in enumerate(weights):
        assert w0 == pytest.approx(0.1 * 10 ** -min(s / 4, 1))
        assert w1 == pytest.approx(0.1 * 10 ** min(s / 4, 1))
    saved = fool.state_dict_for_resume()
    again = FoolTerm([_Brightness()], schedule, instances=2)
    again.load_state_for_resume(saved)
    assert torch.equal(again.log_multiplier, fool.log_multiplier)
    with pytest.raises(ValueError, match="instance count"):
        FoolTerm([_Brightness()], schedule, instances=3).load_state_for_resume(saved)


def test_controlled_generator_fools_more_than_fixed_at_a_weak_lambda(tmp_path, data_root):
    """Where a fixed weak λ leaves G detected, the controller raises it until G fools the
    classifier at about its target, and a killed controlled job resumes to the same weights."""
    cfg = _cfg(data_root, **{"gan.kimg": 3, "experiment.fool_lambda": 0.02,
                             "experiment.fool_adaptive_max": 1000.0})
    real = _real(cfg)
    clf = _Brightness()  # MNIST is mostly black: G must brighten its digits to be called real

    def fooled(run_dir):
        s = generate(load_generator(run_dir / CHECKPOINT), 500, seed=9)
        return (clf(to_model_range(s)) > 0).float().mean().item()

    fixed, controlled = tmp_path / "fixed", tmp_path / "controlled"
    train_generator(GeneratorJob(fixed, seed=2, fool_classifiers=[clf]), cfg, real, CPU,
                    progress=False)
    ccfg = cfg.model_copy(deep=True)
    ccfg.experiment.fool_weighting, ccfg.experiment.fool_target = "controlled", 0.5
    ccfg.experiment.fool_adjust_kimg = 0.3
    train_generator(GeneratorJob(controlled, seed=2, fool_classifiers=[clf]), ccfg, real, CPU,
                    progress=False)
    assert fooled(fixed) < 0.1
    assert fooled(controlled) > 0.2  # its last step oscillates about the target: 0.2-0.95 seen
    log = [json.loads(line) for line in (controlled / "log.jsonl").read_text().splitlines()]
    weights = [r["fool_weight"] for r in log]
    # an untrained G's grey images are called real: the weight first backs off below λ, then
    # rises above it once G learns MNIST's dark background and is detected
    assert min(weights) < 0.5 * 0.02 and max(weights) > 5 * 0.02
    # killed after 1 kimg and resumed: the multiplier comes back with the checkpoint
    part, short = tmp_path / "part", ccfg.model_copy(deep=True)
    short.gan.kimg = 1.0
    train_generator(GeneratorJob(part, seed=2, fool_classifiers=[clf]), short, real, CPU,
                    progress=False)
    train_generator(GeneratorJob(part, seed=2, fool_classifiers=[clf]), ccfg, real, CPU,
                    progress=False)
    a, b = load_state(controlled / CHECKPOINT), load_state(part / CHECKPOINT)
    assert torch.equal(a["companions"]["fool"]["log_multiplier"],
                       b["companions"]["fool"]["log_multiplier"])
    for k in a["nets"]:
        assert torch.equal(a["nets"][k], b["nets"][k]), k


def test_controller_follows_the_evaluated_generator_ema(tmp_path, data_root):
    """With G_ema the controller reads G_ema's fooled fraction (eval mode), not G's: a G_ema
    that never leaves the untrained G (a 10^6-kimg half-life) keeps making grey images that the
    brightness 'classifier' calls real, so the weight only falls, to its floor λ/10, although
    the training G becomes detected; without G_ema the same job raises it above λ."""
    over = {"gan.kimg": 2, "experiment.fool_lambda": 0.02, "experiment.fool_adaptive_max": 10.0,
            "experiment.fool_weighting": "controlled", "experiment.fool_target": 0.5,
            "experiment.fool_adjust_kimg": 0.3}
    clf = _Brightness()
    logs = {}
    for name, ema in (("ema", "{width: 0.125, ema_kimg: 1000000, ema_rampup: null}"),
                      ("no_ema", "{width: 0.125}")):
        cfg = _cfg(data_root, **over, **{"gan.options": ema})
        train_generator(GeneratorJob(tmp_path / name, seed=2, fool_classifiers=[clf]), cfg,
                        _real(cfg), CPU, progress=False)
        logs[name] = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    ema, no_ema = logs["ema"], logs["no_ema"]
    assert all(r["fooled_sampled"] > 0.9 for r in ema)  # the untrained G_ema fools throughout
    assert min(r["fooled"] for r in ema) < 0.5  # while the training G is detected
    assert all(r["fool_weight"] <= 0.02 for r in ema)
    assert ema[-1]["fool_weight"] == pytest.approx(0.002)  # the floor λ/10
    assert "fooled_sampled" not in no_ema[0] and max(r["fool_weight"] for r in no_ema) > 0.04


def test_generator_ema_averages_weights_and_batchnorm_statistics():
    """update_ema: parameters and floating buffers (BatchNorm's running statistics, which
    must match the averaged weights) move (1-β) of the way; integer buffers are copied; with
    average_buffers=False (StyleGAN2) floating buffers are copied too. ema_beta halves the
    old weights' share every `ema_kimg` thousand images, sooner while the ramp-up binds."""
    from gangaps.models.dcgan import Generator
    from gangaps.train.family import ema_beta, update_ema
    torch.manual_seed(0)
    G, ema = Generator(width=0.125), Generator(width=0.125)
    G.train()(torch.randn(8, 100))  # G's running statistics move, its step counter counts
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, G, 0.75, average_buffers=True)
    for k, v in ema.state_dict().items():
        want = G.state_dict()[k] if not v.is_floating_point() else \
            0.75 * before[k] + 0.25 * G.state_dict()[k]
        assert torch.allclose(v, want, atol=1e-6), k
    assert int(ema.fc[1].num_batches_tracked) == 1 and not torch.equal(
        ema.fc[1].running_mean, G.fc[1].running_mean)
    update_ema(ema, G, 0.75, average_buffers=False)
    assert torch.equal(ema.fc[1].running_mean, G.fc[1].running_mean)
    # 1000 images in steps of 16 at a 1 kimg half-life: the old share is one half
    assert ema_beta(1.0, None, 10_000, 16) ** (1000 / 16) == pytest.approx(0.5)
    assert ema_beta(1.0, 0.05, 100, 16) == pytest.approx(0.5 ** (16 / (100 * 16 * 0.05)))
    assert ema_beta(1.0, 0.05, 0, 16) == 0.0  # the first step copies G
