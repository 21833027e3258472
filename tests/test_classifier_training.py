"""Classifier training on real MNIST: selection, short sides, decay, EMA, fakes on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gangaps.config import ClassifierTrainingConfig, Config, load_config
from gangaps.data import load_real
from gangaps.data.mnist import load_mnist
from gangaps.io import load_state
from gangaps.models.classifiers import build_classifier
from gangaps.train.classifier import (
    CHECKPOINT,
    FINAL,
    GeneratorStream,
    _even_split,
    _split,
    _validate,
    augment_workers,
    fake_bank,
    fit_classifier,
    train_classifier,
)
from gangaps.train.gan import CHECKPOINT as GEN_CHECKPOINT
from gangaps.train.gan import GeneratorJob, train_generator
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist("train", data_root)
    return images[labels == 3][:400].unsqueeze(1), images[labels == 8][:400].unsqueeze(1)


def _fit(digits, tmp_path: Path, **training) -> tuple[torch.nn.Module, dict, list[dict]]:
    torch.set_num_threads(1)
    real, fake = training.pop("real", digits[0]), training.pop("fake", digits[1])
    tcfg = ClassifierTrainingConfig(**{"n_real": len(real), "n_fake": len(fake), "batch_size": 32,
                                       "lr": 1e-3, "epochs": 5, "patience": 10, **training})
    torch.manual_seed(0)  # the same initial weights in every call
    model = build_classifier("small_cnn", 1, 28, width=8)
    summary = fit_classifier(model, real, fake, tcfg, seed=3, out_dir=tmp_path, device=torch.device("cpu"),
                             progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    return model, summary, log


@pytest.mark.parametrize("select", ["accuracy", "ap", "loss"])
def test_kept_epoch_is_the_best_on_the_selected_measure(digits, tmp_path: Path, select: str) -> None:
    model, summary, log = _fit(digits, tmp_path, select=select)
    assert len(log) == 5 and summary["select"] == select
    key = {"accuracy": "val_accuracy", "ap": "val_ap", "loss": "val_loss"}[select]
    sign = -1 if select == "loss" else 1
    best_epoch, best = None, -float("inf")
    for row in log:  # the rule: a gain of more than 1e-3 makes a new best
        if sign * row[key] > best + 1e-3:
            best_epoch, best = row["epoch"], sign * row[key]
    assert summary["best_epoch"] == best_epoch
    # The returned weights are that epoch's: validating them again gives its logged measures.
    real_val = _split(digits[0], 0.1, 3)[1]
    fake_val = _split(digits[1], 0.1, 4)[1]
    again = _validate(model, real_val, fake_val, "cpu")
    logged = log[best_epoch - 1]
    assert again["loss"] == pytest.approx(logged["val_loss"], abs=1e-5)
    assert again["ap"] == pytest.approx(logged["val_ap"], abs=1e-6)
    assert summary["val_ap"] == pytest.approx(logged["val_ap"])


def test_a_side_smaller_than_half_a_batch_still_trains(digits, tmp_path: Path) -> None:
    # 20 real images leave 18 to train on, fewer than the 32 a balanced batch of 64 asks for.
    _, summary, log = _fit(digits, tmp_path, real=digits[0][:20], batch_size=64, epochs=2)
    assert summary["epochs"] == 2
    assert all(0 < row["loss"] < 10 for row in log)


def test_weight_decay_shrinks_the_weights(digits, tmp_path: Path) -> None:
    def weight_norm(model: torch.nn.Module) -> float:
        return sum(p.detach().pow(2).sum().item() for n, p in model.named_parameters() if "weight" in n)

    plain, _, _ = _fit(digits, tmp_path / "plain", epochs=2, lr=3e-3)
    decayed, _, _ = _fit(digits, tmp_path / "decayed", epochs=2, lr=3e-3, weight_decay=20.0)
    assert weight_norm(decayed) < 0.8 * weight_norm(plain)


def test_ema_weights_are_kept_and_resume_exactly(digits, tmp_path: Path) -> None:
    one_epoch, summary, _ = _fit(digits, tmp_path / "resumed", epochs=1, ema=0.9)
    raw = load_state(tmp_path / "resumed" / CHECKPOINT)
    assert summary["best_epoch"] == 1
    for name, value in one_epoch.state_dict().items():  # the average is what is kept...
        assert torch.equal(value, raw["ema"][name]), name
    # ...and it is not the raw weights, which the checkpoint holds too.
    assert not torch.equal(raw["ema"]["net.0.weight"], raw["model"]["net.0.weight"])
    # A second run asking for two epochs resumes to the same weights as two epochs at once.
    resumed, _, _ = _fit(digits, tmp_path / "resumed", epochs=2, ema=0.9)
    straight, _, _ = _fit(digits, tmp_path / "straight", epochs=2, ema=0.9)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert torch.equal(load_state(tmp_path / "resumed" / CHECKPOINT)["ema"]["net.0.weight"],
                       load_state(tmp_path / "straight" / CHECKPOINT)["ema"]["net.0.weight"])


# ---------------------------------------------------------------- augmentation off the step

AUGMENT = {"crop": 24, "flip": True, "blur_prob": 0.5, "blur_sigma": [0.0, 1.0], "jpeg_prob": 0.5}


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_augmented_training_is_exact_with_any_workers_and_across_a_resume(digits, tmp_path: Path) -> None:
    """Each step's augmentation is seeded by (seed, step): inline, on threads and resumed, the
    same weights."""
    inline, _, _ = _fit(digits, tmp_path / "inline", epochs=2, augment=AUGMENT, augment_workers=0)
    _fit(digits, tmp_path / "resumed", epochs=1, augment=AUGMENT, augment_workers=2)
    resumed, _, _ = _fit(digits, tmp_path / "resumed", epochs=2, augment=AUGMENT, augment_workers=1)
    assert _weights_equal(inline, resumed)
    plain, _, _ = _fit(digits, tmp_path / "plain", epochs=2)
    assert not _weights_equal(inline, plain)  # the augmentation did something
    auto = ClassifierTrainingConfig()  # auto: inline on CPU, threads beside an accelerator
    assert augment_workers(auto, CPU) == 0 and augment_workers(auto, torch.device("cuda")) >= 1


def test_a_checkpoint_of_one_augmentation_stream_continues_that_stream(digits, tmp_path: Path) -> None:
    """Checkpoints written before per-step seeds (augment_rng, no augment_seeding) resume on
    their sequential stream, inline, so such a job still ends as it would have."""
    from gangaps.io import save_state
    for d in ("new", "old"):
        _fit(digits, tmp_path / d, epochs=1, augment=AUGMENT)
    old = load_state(tmp_path / "old" / CHECKPOINT)
    del old["augment_seeding"]
    start = torch.Generator().manual_seed(11).get_state()
    save_state(tmp_path / "old" / CHECKPOINT, {**old, "augment_rng": start})
    kept_old, _, _ = _fit(digits, tmp_path / "old", epochs=2, augment=AUGMENT)
    kept_new, _, _ = _fit(digits, tmp_path / "new", epochs=2, augment=AUGMENT)
    state = load_state(tmp_path / "old" / CHECKPOINT)
    assert state["augment_seeding"] == "stream" and not torch.equal(state["augment_rng"], start)
    assert load_state(tmp_path / "new" / CHECKPOINT)["augment_seeding"] == "per_step"
    assert not _weights_equal(kept_old, kept_new)


# ---------------------------------------------------------------- fakes drawn on the fly


@pytest.fixture(scope="module")
def generators(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[Path]]:
    """Two independently trained tiny DCGAN instances (real GAN loop, 0.5 kimg each)."""
    torch.set_num_threads(1)
    cfg = load_config(None, tiny_overrides(**{"data.path": str(data_root), "gan.kimg": 0.5}))
    real = load_real(cfg.data).gan_train[:2000]
    root = tmp_path_factory.mktemp("generators")
    for seed in (1, 2):
        train_generator(GeneratorJob(root / f"g{seed}", seed=seed), cfg, real, CPU, progress=False)
    return cfg, [root / f"g{seed}" / GEN_CHECKPOINT for seed in (1, 2)]


def test_even_split_rotates_the_remainder() -> None:
    assert _even_split(7, 2, 3) == [3, 4] and _even_split(7, 2, 0) == [4, 3]
    totals = [sum(col) for col in zip(*(_even_split(5, 3, step) for step in range(3)))]
    assert totals == [5, 5, 5]  # over k steps every generator gives the same number


def test_stream_batches_are_fresh_and_reproducible(generators) -> None:
    _, paths = generators
    stream = GeneratorStream(paths, seed=0, device=CPU)
    a = stream.draw(7, step=3)
    assert a.shape == (7, 1, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, GeneratorStream(paths, seed=0, device=CPU).draw(7, step=3))
    assert not torch.equal(a, stream.draw(7, step=4))
    assert not torch.equal(a, GeneratorStream(paths, seed=1, device=CPU).draw(7, step=3))
    bank = fake_bank(paths, 7, seed=0, device=CPU)
    assert not any(torch.equal(x, y) for x in a for y in bank)  # the stream never repeats the bank


def test_on_the_fly_training_validates_on_a_bank_and_resumes_exactly(generators, tmp_path: Path) -> None:
    cfg, paths = generators
    real = load_real(cfg.data).classifier_train[:400]
    tcfg = ClassifierTrainingConfig(n_real=400, n_fake=400, batch_size=32, lr=1e-3, epochs=2,
                                    fakes="on_the_fly")

    def train(out: Path, epochs: int) -> dict:
        return train_classifier(out, "small_cnn", {"width": 8}, 5, paths, real,
                                tcfg.model_copy(update={"epochs": epochs}), CPU, progress=False)

    straight = train(tmp_path / "straight", 2)
    assert straight["n_fake"] == 40  # n_fake × val_fraction validation fakes; training draws fresh ones
    train(tmp_path / "resumed", 1)
    train(tmp_path / "resumed", 2)
    a, b = (load_state(tmp_path / d / FINAL)["model"] for d in ("straight", "resumed"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_initial_weights_depend_on_the_seed_not_on_earlier_randomness(generators, tmp_path: Path) -> None:
    cfg, paths = generators
    real = load_real(cfg.data).classifier_train[:200]
    tcfg = ClassifierTrainingConfig(n_real=200, n_fake=200, batch_size=32, epochs=1)
    for name, history in (("a", 1), ("b", 1000)):
        torch.rand(history)  # whatever ran before in this process
        train_classifier(tmp_path / name, "small_cnn", {"width": 8}, 5, paths, real, tcfg, CPU, progress=False)
    a, b = (load_state(tmp_path / d / FINAL)["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_classifier_cli_draws_fakes_on_the_fly_from_a_run(generators, digits, tmp_path: Path) -> None:
    from PIL import Image

    from gangaps.cli import main

    _, paths = generators
    run = tmp_path / "run"
    for n, ckpt in enumerate(paths):  # a run's layout: iter_KK/gen_NN/{checkpoint, DONE}
        gen_dir = run / "iter_00" / f"gen_{n:02d}"
        gen_dir.mkdir(parents=True)
        (gen_dir / "checkpoint.safetensors").write_bytes(ckpt.read_bytes())
        (gen_dir / "DONE").touch()
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for i, img in enumerate(digits[0][:200]):
        Image.fromarray(img[0].numpy()).save(real_dir / f"{i:03d}.png")

    def train(out: str, *extra: str) -> dict:
        assert main(["train-classifier", "--real", str(real_dir), "--run", str(run), "--iteration", "0",
                     "--arch", "small_cnn", "--option", "width=8", "--epochs", "1", "--batch-size", "32",
                     "--out", str(tmp_path / out), "-q", *extra]) == 0
        return json.loads((tmp_path / out / "summary.json").read_text())

    fly = train("fly", "--fakes", "on-the-fly")
    bank = train("bank")
    assert fly["settings"]["fakes"] == "on_the_fly" and "fakes" not in bank["settings"]
    assert bank["n_fake"] == 200 and fly["n_fake"] == 20  # on the fly, only --val-fraction 0.1 is stored
    # Same real images, same seed and initial weights: only the training fakes differ.
    a, b = (load_state(tmp_path / d / FINAL)["model"] for d in ("fly", "bank"))
    assert not torch.equal(a["net.0.weight"], b["net.0.weight"])
