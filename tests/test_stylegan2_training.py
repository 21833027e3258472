"""StyleGAN2 trained by the one GAN loop on real faces: phases, EMA, fool term, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gangaps.config import Config, from_dict
from gangaps.data import to_model_range
from gangaps.data.images import load_image_dataset
from gangaps.errors import UserError
from gangaps.generators import load_generator
from gangaps.io import load_state
from gangaps.models.classifiers import freeze, small_cnn
from gangaps.train.family import get_family
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator
from gangaps.train.stylegan2_family import StyleGAN2Family
from tests.conftest import DATA

FACES = DATA / "faces_ffhq256_subset" / "real"
pytestmark = [pytest.mark.skipif(not FACES.is_dir(), reason="shared face images not available"),
              pytest.mark.usefixtures("one_thread")]

RES, BATCH = 32, 8
CPU = torch.device("cpu")
TINY = {"w_dim": 32, "channel_base": 256, "channel_max": 32, "mapping_layers": 2}


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return load_image_dataset(FACES, RES, 3)[:256]


def _cfg(steps: int, log_steps: int = 8, ckpt_steps: int = 1000, lam: float = 0.0,
         **options) -> Config:
    kimg = lambda s: s * BATCH / 1000  # noqa: E731
    return from_dict({
        "experiment": {"fool_lambda": lam},
        "gan": {"family": "stylegan2", "kimg": kimg(steps), "batch_size": BATCH,
                "lr": 0.0025, "betas": [0.0, 0.99], "z_dim": 32, "options": {**TINY, **options},
                "log_kimg": kimg(log_steps), "checkpoint_kimg": kimg(ckpt_steps)},
    })


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_training_runs_all_phases(faces: torch.Tensor, tmp_path: Path) -> None:
    cfg = _cfg(steps=32)
    out = train_generator(GeneratorJob(tmp_path, seed=1), cfg, faces, CPU, progress=False)
    assert out["steps"] == 32
    log = _log(tmp_path)
    assert [r["step"] for r in log] == [8, 16, 24, 32]
    # Greg every 4 steps: in every 8-step window; Dreg every 16: steps 0 and 16 only.
    assert all("pl_penalty" in r and "pl_mean" in r for r in log)
    assert ["r1_penalty" in r for r in log] == [True, False, True, False]
    for r in log:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in r.items() if isinstance(v, float))
    # D learns to tell reals from fakes; G's loss rises as it does; pl_mean tracks lengths.
    assert log[-1]["loss_D"] < log[0]["loss_D"] - 0.05
    assert log[-1]["D_real"] - log[-1]["D_fake"] > log[0]["D_real"] - log[0]["D_fake"]
    assert log[-1]["pl_mean"] > log[0]["pl_mean"] > 0
    assert log[0]["augment_p"] == 1.0  # DiffAugment: every op, every image

    state = load_state(tmp_path / CHECKPOINT)
    nets = state["nets"]
    g = {k[2:]: v for k, v in nets.items() if k.startswith("G.")}
    g_ema = {k[6:]: v for k, v in nets.items() if k.startswith("G_ema.")}
    assert g.keys() == g_ema.keys()
    trainable = [k for k in g if "weight" in k or "bias" in k]
    assert any(not torch.equal(g[k], g_ema[k]) for k in trainable)  # EMA lags G
    assert torch.equal(g["mapping.w_avg"], g_ema["mapping.w_avg"])  # buffers copied
    assert g["mapping.w_avg"].abs().sum() > 0  # w_avg tracked during training
    assert nets["loss_state.pl_mean"] > 0
    # Lazy regularisation: Adam hyper-parameters scaled by c = I / (I + 1).
    for k, interval in (("G", 4), ("D", 16)):
        c = interval / (interval + 1)
        group = state["opts"][k]["param_groups"][0]
        assert group["lr"] == pytest.approx(0.0025 * c)
        assert tuple(group["betas"]) == pytest.approx((0.0, 0.99 ** c))

    # The sampler is G_ema, loadable on its own as a frozen generator.
    G = load_generator(tmp_path / CHECKPOINT)
    assert torch.equal(G.mapping.fc0.weight, g_ema["mapping.fc0.weight"])
    imgs = G(torch.randn(4, 32))
    assert imgs.shape == (4, 3, RES, RES) and torch.isfinite(imgs).all()


def test_phases_and_options() -> None:
    fam = StyleGAN2Family()
    cfg = _cfg(steps=1)
    assert [(p.name, p.opt, p.interval, p.fool) for p in fam.phases(cfg.gan)] == [
        ("Gmain", "G", 1, True), ("Greg", "G", 4, False), ("Dmain", "D", 1, False),
        ("Dreg", "D", 16, False)]
    nets = get_family("stylegan2").build(cfg.gan, 3, RES)
    assert set(nets) == {"G", "D", "G_ema", "augment", "loss_state"}
    # Without regularisation, no lazy phases and plain Adam settings.
    cfg0 = _cfg(steps=1, r1_gamma=0, pl_weight=0)
    fam0 = StyleGAN2Family()
    nets0 = fam0.build(cfg0.gan, 3, RES)
    assert [p.name for p in fam0.phases(cfg0.gan)] == ["Gmain", "Dmain"]
    assert fam0.optimizers(cfg0.gan, nets0)["D"].param_groups[0]["lr"] == 0.0025
    with pytest.raises(UserError, match="augment"):
        StyleGAN2Family().build(_cfg(steps=1, augment="fancy").gan, 3, RES)
    with pytest.raises(UserError, match="power-of-two"):
        StyleGAN2Family().build(cfg.gan, 3, 24)


def test_kill_and_resume_is_exact(faces: torch.Tensor, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # ADA-lite with a target every real logit beats: p rises by 8·4/1000 every 4 steps, so
    # its state matters and must come back from the checkpoint.
    cfg = _cfg(steps=20, ckpt_steps=8, augment="ada", ada_target=-1.0, ada_kimg=1.0)
    train_generator(GeneratorJob(tmp_path / "whole", seed=3), cfg, faces, CPU, progress=False)

    class Killed(Exception):
        pass

    real_end_step = StyleGAN2Family.end_step

    def dying_end_step(self, nets, step, batch_size):
        real_end_step(self, nets, step, batch_size)
        if step == 12:  # after the checkpoint at step 8, with 4 more steps of state in memory
            raise Killed

    monkeypatch.setattr(StyleGAN2Family, "end_step", dying_end_step)
    with pytest.raises(Killed):
        train_generator(GeneratorJob(tmp_path / "split", seed=3), cfg, faces, CPU,
                        progress=False)
    assert load_state(tmp_path / "split" / CHECKPOINT)["step"] == 8
    monkeypatch.setattr(StyleGAN2Family, "end_step", real_end_step)
    train_generator(GeneratorJob(tmp_path / "split", seed=3), cfg, faces, CPU, progress=False)

    whole = load_state(tmp_path / "whole" / CHECKPOINT)
    split = load_state(tmp_path / "split" / CHECKPOINT)
    assert whole["step"] == split["step"] == 20
    assert whole["nets"]["augment.p"].item() == pytest.approx(5 * 8 * 4 / 1000)
    assert whole["nets"].keys() == split["nets"].keys()
    for k, v in whole["nets"].items():
        assert torch.equal(v, split["nets"][k]), k  # G_ema, G, D, p, pl_mean: bit-identical


def _fool_loss(run: Path, clf: torch.nn.Module) -> float:
    G = load_generator(run / CHECKPOINT)
    torch.manual_seed(123)  # same latents and noise for both runs
    with torch.no_grad():
        return F.softplus(-clf(G(torch.randn(64, 32)))).mean().item()


def _trained_classifier(faces: torch.Tensor) -> torch.nn.Module:
    """A real GAN-classifier: small_cnn taught reals vs samples of an untrained StyleGAN2."""
    torch.manual_seed(0)
    G = StyleGAN2Family().build(_cfg(steps=1).gan, 3, RES)["G"]
    with torch.no_grad():
        fakes = G(torch.randn(len(faces), 32)).clamp(-1, 1)
    x = torch.cat([to_model_range(faces), fakes])
    y = torch.cat([torch.ones(len(faces)), torch.zeros(len(fakes))])
    clf = small_cnn(3, RES, width=8)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(60):
        idx = torch.randint(0, len(x), (32,))
        loss = F.binary_cross_entropy_with_logits(clf(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.zero_grad(set_to_none=True)
    return freeze(clf)


def test_fool_term_lowers_classifier_loss(faces: torch.Tensor, tmp_path: Path) -> None:
    clf = _trained_classifier(faces)
    runs = {}
    for lam in (0.0, 5.0):
        run = tmp_path / f"lam{lam}"
        job = GeneratorJob(run, seed=5, fool_classifiers=[clf])
        train_generator(job, _cfg(steps=16, lam=lam), faces, CPU, progress=False)
        runs[lam] = run
    log = _log(runs[5.0])
    assert "loss_fool" in log[0] and log[-1]["loss_fool"] < log[0]["loss_fool"]
    assert "loss_fool" not in _log(runs[0.0])[0]
    assert all(p.grad is None for p in clf.parameters())  # the classifier stays frozen
    fooled, plain = _fool_loss(runs[5.0], clf), _fool_loss(runs[0.0], clf)
    assert plain > 1.0  # without the fool term the classifier still spots G_ema's samples
    assert fooled < 0.5 * plain  # λ·L_fool in Gmain moved G (and so G_ema) towards "real"


@pytest.mark.parametrize("res,batch", [(64, 32), (128, 32), (256, 16)])
def test_ffhq_configs(res: int, batch: int) -> None:
    from gangaps.config import load_config
    root = Path(__file__).resolve().parents[1]
    path = root / "configs" / f"ffhq-stylegan2-{res}.yaml"
    # null weights: torch-fidelity's file, fetched when a run starts (tests/test_configs_dry_run)
    assert load_config(path, ["data.path=/my/ffhq"]).evaluation.inception_weights is None
    cfg = load_config(path, ["data.path=/my/ffhq", "evaluation.inception_weights=/my/inception.pth"])
    assert (cfg.data.dataset, cfg.data.resolution, cfg.data.channels) == ("images", res, 3)
    assert cfg.gan.family == "stylegan2" and cfg.gan.batch_size == batch
    opts = StyleGAN2Family().resolve_options(cfg.gan)  # every key known, every value valid
    assert opts["r1_gamma"] == pytest.approx(0.0002 * res**2 / batch)  # NVIDIA auto formula
    assert opts["ema_kimg"] == pytest.approx(batch * 10 / 32)
    assert (opts["channel_base"], opts["channel_max"], opts["mapping_layers"]) == (16384, 512, 2)
    assert cfg.evaluation.fid == "inception"
    assert [s.role for s in cfg.classifiers if s.arch == "resnet18"] == ["target", "heldout"]


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from gangaps.train import distributed as ddp
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        # Gradient averaging before the step: rank r's gradient is r + 1 everywhere.
        lin = torch.nn.Linear(3, 2)
        ddp.broadcast_module(lin)
        opt = torch.optim.SGD(lin.parameters(), lr=1.0)
        ddp.average_gradients_before_step(opt)
        before = lin.weight.detach().clone()
        for p in lin.parameters():
            p.grad = torch.full_like(p, rank + 1.0)
        opt.step()
        assert torch.allclose(lin.weight, before - (world + 1) / 2), "gradients not averaged"
        # A tiny StyleGAN2 job per rank: own seed and data shard, one set of weights.
        seed, batch = ddp.rank_job_settings(7, 8)
        faces = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
        cfg = from_dict({"gan": {"family": "stylegan2", "kimg": 4 * batch / 1000,
                                 "batch_size": batch, "z_dim": 32, "lr": 0.0025,
                                 "options": TINY}})
        job = GeneratorJob(Path(out) / f"rank{rank}", seed=seed)
        train_generator(job, cfg, ddp.shard(faces), CPU, progress=False)
    finally:
        ddp.shutdown()


def test_data_parallel_ranks_stay_identical(tmp_path: Path) -> None:
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    a = load_state(tmp_path / "rank0" / CHECKPOINT)["nets"]
    b = load_state(tmp_path / "rank1" / CHECKPOINT)["nets"]
    for k in a:
        # w_avg is each rank's running mean of its own w's (as in NVIDIA's multi-GPU runs).
        if k.startswith(("G.", "D.", "G_ema.")) and not k.endswith("w_avg"):
            assert torch.equal(a[k], b[k]), k  # averaged gradients: same weights everywhere
    # ...while each rank drew its own latents: the per-rank path-length means differ.
    assert not torch.equal(a["loss_state.pl_mean"], b["loss_state.pl_mean"])


def test_fool_controller_reads_g_ema(faces: torch.Tensor, tmp_path: Path) -> None:
    """The controlled weight follows G_ema's fooled fraction (StyleGAN2's sampler, with its
    own noise inputs), read every 4th step, and the weight moves off λ accordingly."""
    clf = _trained_classifier(faces)
    cfg = _cfg(steps=8, log_steps=4, lam=1.0)
    cfg.experiment.fool_weighting, cfg.experiment.fool_adjust_kimg = "controlled", 0.032
    train_generator(GeneratorJob(tmp_path, seed=5, fool_classifiers=[clf]), cfg, faces, CPU,
                    progress=False)
    log = _log(tmp_path)
    assert len(log) == 2 and all(0.0 <= r["fooled_sampled"] <= 1.0 for r in log)
    # a reading (steps 0 and 4) moves log10 m by 4 / adjust_steps = 1, within [-1, 1]; each
    # log line is the mean of its 4 steps' weights (λ = 1): recomputed from the readings
    def moved(m: float, fooled: float) -> float:
        return max(-1.0, min(1.0, m + (fooled < 0.5) - (fooled > 0.5)))
    m1 = moved(0.0, log[0]["fooled_sampled"])
    m2 = moved(m1, log[1]["fooled_sampled"])
    assert log[0]["fool_weight"] == pytest.approx((1 + 3 * 10 ** m1) / 4, rel=1e-4)
    assert log[1]["fool_weight"] == pytest.approx((10 ** m1 + 3 * 10 ** m2) / 4, rel=1e-4)
