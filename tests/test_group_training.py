"""Fused training of a group of DCGAN instances on real MNIST: it is the instances trained alone.

Each instance keeps its own init, data order, latents, dropout masks, loss and adaptive fool
weight, so a group of three and three separate jobs must agree; a killed group resumes
exactly; every instance ends as an ordinary generator checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gangaps.config import load_config
from gangaps.data import load_real
from gangaps.errors import UserError
from gangaps.generators import generate, load_generator
from gangaps.io import load_state
from gangaps.models.classifiers import build_classifier
from gangaps.models.dcgan import Generator
from gangaps.train.gan import CHECKPOINT, GeneratorJob, group_size, train_generator, train_generators
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")
SEEDS = (11, 12, 13)
# 50 steps of 32 images, a checkpoint every 10; the fool term (adaptive) from step 20 on; a
# G_ema (0.2 kimg half-life, ramped up), which fused and alone must keep alike too
OVERRIDES = {"gan.kimg": 1.6, "gan.checkpoint_kimg": 0.32, "gan.log_kimg": 0.32,
             "gan.options.ema_kimg": 0.2,
             "experiment.fool_lambda": 1.0, "experiment.fool_weighting": "adaptive",
             "experiment.fool_start": 0.4, "experiment.fool_adaptive_max": 1000.0,
             "gan.tensorboard": "true"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cfg(data_root, **extra):
    return load_config(None, tiny_overrides(**{"data.path": str(data_root), **OVERRIDES,
                                               **extra}))


def _classifier():
    torch.manual_seed(0)
    return build_classifier("small_cnn", 1, 28, width=8)


def _real(cfg):
    return load_real(cfg.data).gan_train[:4000]


def _jobs(root: Path) -> list[GeneratorJob]:
    clf = _classifier()
    return [GeneratorJob(root / f"gen_{i:02d}", seed, [clf]) for i, seed in enumerate(SEEDS)]


def _group(root: Path, cfg, real) -> list[dict]:
    return train_generators(_jobs(root), cfg, real, CPU, progress=False, group_dir=root / "group")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root) -> dict[str, Path]:
    """The same three instances (50 steps, and 1 step) as a group and as three jobs."""
    root = tmp_path_factory.mktemp("groups")
    out = {}
    for kimg, name in ((1.6, "50"), (0.032, "1")):
        cfg = _cfg(data_root, **{"gan.kimg": kimg})
        real = _real(cfg)
        _group(root / f"group{name}", cfg, real)
        for job in _jobs(root / f"alone{name}"):
            train_generator(job, cfg, real, CPU, progress=False)
        out[f"group{name}"], out[f"alone{name}"] = root / f"group{name}", root / f"alone{name}"
    return out


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].ndim)


def _rel_diff(a: dict, b: dict) -> float:
    """The largest ‖a − b‖ / ‖b‖ over tensors (weights, moments, BatchNorm statistics)."""
    return max(float((a[k].float() - b[k].float()).norm() / b[k].float().norm())
               for k in b if b[k].ndim and b[k].float().norm() > 0)


def test_one_step_of_a_group_is_three_jobs_alone(runs):
    for i in range(len(SEEDS)):
        g = load_state(runs["group1"] / f"gen_{i:02d}" / CHECKPOINT)
        a = load_state(runs["alone1"] / f"gen_{i:02d}" / CHECKPOINT)
        assert g["step"] == a["step"] == 1 and g["spec"] == a["spec"]
        assert set(g["nets"]) == set(a["nets"])
        # Adam's first step is lr·g/(|g|+eps) ≈ ±lr: for g near 0 float rounding moves it by
        # a few % of lr (2e-4), or flips its sign (a 2·lr difference; at 1 thread: 30 of the
        # 183,577 weights, in G's first layers). A wrong batch, latent or mask moves most.
        off = sum(int(((g["nets"][k].float() - a["nets"][k].float()).abs() > 1e-5).sum())
                  for k in a["nets"] if a["nets"][k].ndim)
        total = sum(a["nets"][k].numel() for k in a["nets"] if a["nets"][k].ndim)
        assert off <= 1e-3 * total and _max_diff(g["nets"], a["nets"]) <= 2.05 * 2e-4
        for k in ("G", "D"):  # Adam's moments too: one fused Adam is three Adams (the
            # gradients of grouped and plain kernels differ by float rounding: measured 0.044 %
            # of a tensor's norm at 1 thread; a wrong input gives differences of ~100 %)
            for idx, moments in a["opts"][k]["state"].items():
                assert _rel_diff(g["opts"][k]["state"][idx], moments) < 1e-2
        for key in ("sampler", "z_gen", "mask_gen"):  # the same draws were consumed
            assert str(g[key]) == str(a[key])
        lg, la = (read_jsonl(runs[r] / f"gen_{i:02d}" / "log.jsonl")[-1] for r in ("group1", "alone1"))
        for k in ("loss_D", "loss_G", "D_real", "D_fake"):
            assert lg[k] == pytest.approx(la[k], rel=1e-5, abs=1e-6), k


def test_fifty_steps_with_dropout_and_adaptive_fool_weights_agree(runs):
    """Stated tolerance: every tensor (weights and BatchNorm statistics) within 2% relative
    L2 distance of the instance trained alone (measured: ≤ 0.6%; float rounding of grouped vs
    plain kernels, grown over 50 GAN steps), while two instances are ≥ 50% apart."""
    for i in range(len(SEEDS)):
        g = load_state(runs["group50"] / f"gen_{i:02d}" / CHECKPOINT)
        a = load_state(runs["alone50"] / f"gen_{i:02d}" / CHECKPOINT)
        other = load_state(runs["alone50"] / f"gen_{(i + 1) % len(SEEDS):02d}" / CHECKPOINT)
        assert g["step"] == a["step"] == 50
        assert _rel_diff(g["nets"], a["nets"]) < 0.02 < 0.5 < _rel_diff(other["nets"], a["nets"])
        lg, la = (read_jsonl(runs[r] / f"gen_{i:02d}" / "log.jsonl") for r in ("group50", "alone50"))
        assert [r["step"] for r in lg] == [r["step"] for r in la]
        weights = [r["fool_weight"] for r in lg if "fool_weight" in r]
        assert weights and weights == pytest.approx([r["fool_weight"] for r in la if "fool_weight" in r],
                                                    rel=1e-2)
    # instances are independent: their own weights and fool weights differ
    w = [read_jsonl(runs["group50"] / f"gen_{i:02d}" / "log.jsonl")[-1]["fool_weight"]
         for i in range(len(SEEDS))]
    assert len(set(w)) == len(SEEDS)


def test_an_instance_of_a_group_is_an_ordinary_generator(runs):
    G = load_generator(runs["group50"] / "gen_01" / CHECKPOINT)
    assert type(G) is Generator
    nets = load_state(runs["group50"] / "gen_01" / CHECKPOINT)["nets"]
    ema = {k[len("G_ema."):]: v for k, v in nets.items() if k.startswith("G_ema.")}
    # what is sampled is the average, which lags G (BatchNorm statistics included)
    assert all(torch.equal(v, ema[k]) for k, v in G.state_dict().items())
    assert _rel_diff(ema, {k: nets[f"G.{k}"] for k in ema}) > 1e-3
    alone = load_generator(runs["alone50"] / "gen_01" / CHECKPOINT)
    x, y = generate(G, 64, seed=3), generate(alone, 64, seed=3)
    assert x.shape == (64, 1, 28, 28) and (x.float() - y.float()).abs().mean() < 2.0
    other = generate(load_generator(runs["group50"] / "gen_02" / CHECKPOINT), 64, seed=3)
    assert (x.float() - other.float()).abs().mean() > 5.0  # not a copy of another instance


def test_tensorboard_events_hold_per_instance_curves(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gangaps.train.events import add_scalars
    d = runs["group50"] / "gen_00"
    add_scalars(d, {"quality/fid": 12.5}, 50)
    ev = EventAccumulator(str(d / "tensorboard"))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"train/loss_G", "train/loss_D", "train/loss_fool", "train/fool_weight",
            "train/img_per_s", "quality/fid"} <= tags
    log = read_jsonl(d / "log.jsonl")
    assert [e.value for e in ev.Scalars("train/loss_G")] == pytest.approx([r["loss_G"] for r in log])
    assert ev.Scalars("quality/fid")[0].value == 12.5
    other = EventAccumulator(str(runs["group50"] / "gen_01" / "tensorboard"))
    other.Reload()
    assert [e.value for e in other.Scalars("train/loss_G")] != [e.value for e in ev.Scalars("train/loss_G")]


def test_killed_group_resumes_to_identical_weights(runs, data_root, tmp_path):
    """SIGKILL a group job mid-training (after a checkpoint), rerun: the uninterrupted run's
    weights, bit for bit."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = {[str(Path(__file__).parents[1]), str(Path(__file__).parents[1] / "src")]!r}
        from pathlib import Path
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # this process's: the same float sums
        from tests.test_group_training import _cfg, _group, _real
        cfg = _cfg(Path({str(data_root)!r}))
        _group(Path({str(root)!r}), cfg, _real(cfg))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    ckpt, t0 = root / "group" / CHECKPOINT, time.monotonic()
    while proc.poll() is None and not ckpt.exists() and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load_state(ckpt)["step"]
    assert 0 < step < 50, "the kill came too late"
    assert not (root / "gen_00" / CHECKPOINT).exists()
    cfg = _cfg(data_root)
    _group(root, cfg, _real(cfg))
    for i in range(len(SEEDS)):
        a = load_state(runs["group50"] / f"gen_{i:02d}" / CHECKPOINT)
        b = load_state(root / f"gen_{i:02d}" / CHECKPOINT)
        assert all(torch.equal(a["nets"][k], b["nets"][k]) for k in a["nets"])
        logs = [read_jsonl(r / f"gen_{i:02d}" / "log.jsonl") for r in (runs["group50"], root)]
        assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
        assert [r["loss_G"] for r in logs[0]] == [r["loss_G"] for r in logs[1]]
        ev = EventAccumulator(str(root / f"gen_{i:02d}" / "tensorboard"))
        ev.Reload()  # rewritten from the kept log on resume: in order, once each
        assert [e.step for e in ev.Scalars("train/loss_G")] == [r["step"] for r in logs[1]]
        assert [e.value for e in ev.Scalars("train/loss_G")] == pytest.approx(
            [r["loss_G"] for r in logs[1]])
        assert len(list((root / f"gen_{i:02d}" / "tensorboard").glob("events.*"))) == 1


def test_group_size_is_resolved_and_checked(data_root):
    cfg = _cfg(data_root)
    assert group_size(cfg.gan, CPU, 3) == 3 and group_size(cfg.gan, CPU, 10) == 4
    cfg.gan.group_size = 2
    assert group_size(cfg.gan, CPU, 10) == 2
    cfg.gan.family = "stylegan2"
    with pytest.raises(UserError, match="one instance at a time"):
        group_size(cfg.gan, CPU, 10)
    cfg.gan.group_size = "auto"
    assert group_size(cfg.gan, CPU, 10) == 1


def test_flops_of_one_instance_are_counted_without_touching_the_rng():
    """The FLOPs behind every GPU log line's MFU: one ordinary instance's step."""
    from gangaps.config import GANConfig
    from gangaps.train.dcgan_family import DCGANFamily
    from gangaps.train.speed import instance_step_flops
    family = DCGANFamily()
    rng = torch.get_rng_state()
    small, big = (instance_step_flops(family, GANConfig(options={"width": w}), 1, 28, 8, CPU)
                  for w in (0.125, 0.25))
    assert torch.equal(rng, torch.get_rng_state())
    assert 2 < big / small < 5  # convolutions scale with width² (the z layer with width)


def test_a_run_records_its_group_size_and_refuses_another(data_root, tmp_path):
    from gangaps.experiment.runner import Runner
    from gangaps.experiment.store import RunStore

    def open_and_close(**extra) -> int:
        r = Runner(_cfg(data_root, **{"device": "cpu", **extra}), tmp_path / "run", progress=False)
        r.store.release()  # the run lock, taken by open_run
        return r.cfg.gan.group_size

    assert open_and_close() == 3  # auto, resolved for 3 instances on CPU
    store = RunStore(tmp_path / "run")
    assert store.load_config().gan.group_size == 3
    assert open_and_close(**{"gan.group_size": 3}) == 3
    with pytest.raises(UserError, match="gan.group_size"):
        open_and_close(**{"gan.group_size": 1})
    # a run made before groups existed says auto: it trained, and resumes, one at a time
    text = store.config_path.read_text()
    store.config_path.write_text(text.replace("group_size: 3", "group_size: auto"))
    assert open_and_close() == 1


def test_status_names_the_group_of_an_interrupted_instance(data_root, tmp_path):
    from gangaps.config import to_yaml
    from gangaps.experiment.status import status_text
    from gangaps.experiment.store import RunStore
    from gangaps.io import atomic_write_text
    store = RunStore(tmp_path)
    atomic_write_text(store.config_path, to_yaml(_cfg(data_root, **{"experiment.instances": 4})))
    for n in range(4):
        (tmp_path / "iter_00" / f"gen_{n:02d}").mkdir(parents=True)
    (tmp_path / "iter_00" / "group_00-02").mkdir()
    assert "interrupted" not in status_text(tmp_path)
    (tmp_path / "iter_00" / "group_00-02" / CHECKPOINT).write_bytes(b"x")
    iteration0 = status_text(tmp_path).split("iteration 1:")[0]
    lines = {ln.split()[0]: ln for ln in iteration0.splitlines() if "gen_" in ln}
    for n in range(3):
        assert lines[f"gen_{n:02d}"].endswith("interrupted (resumes from checkpoint) in group_00-02")
    assert lines["gen_03"].endswith("pending")


def test_controlled_fool_weights_of_a_group_are_the_instances_alone(data_root, tmp_path):
    """The controller's multiplier is per instance: 20 steps of a fused pair give each
    instance, step by step, the fool weights and fooled fractions (its G's, and its G_ema's
    that the controller follows) it has trained alone."""
    cfg = _cfg(data_root, **{"gan.kimg": 0.64, "experiment.fool_start": 0.0,
                             "experiment.fool_weighting": "controlled",
                             "experiment.fool_adaptive_max": 10.0, "gan.log_kimg": 0.032,
                             "experiment.fool_adjust_kimg": 0.5, "gan.tensorboard": "false"})
    real, clf = _real(cfg), _classifier()
    jobs = [GeneratorJob(tmp_path / "group" / f"gen_{i:02d}", s, [clf]) for i, s in enumerate(SEEDS[:2])]
    train_generators(jobs, cfg, real, CPU, progress=False, group_dir=tmp_path / "group" / "g")
    curves = []
    for i, seed in enumerate(SEEDS[:2]):
        alone = tmp_path / "alone" / f"gen_{i:02d}"
        train_generator(GeneratorJob(alone, seed, [clf]), cfg, real, CPU, progress=False)
        lg, la = (read_jsonl(d / "log.jsonl") for d in (jobs[i].out_dir, alone))
        curves.append([r["fool_weight"] for r in lg])
        assert curves[-1] == pytest.approx([r["fool_weight"] for r in la], rel=1e-5)
        for key in ("fooled", "fooled_sampled"):  # G_ema is read every 4th step
            got, want = ([r.get(key, -1.0) for r in log] for log in (lg, la))
            assert got == pytest.approx(want, abs=1e-6), key
        assert sum("fooled_sampled" in r for r in lg) == 5
    assert len(curves[0]) == 20 and len(set(curves[0])) > 2  # the controller moved
