"""GAN-classifier training: real vs generated, balanced 1:1, as detectors are trained in practice.

`fit_classifier` trains any registered architecture on two uint8 image sets (real, fake) with a
validation split, detector augmentation, early stopping and learning-rate drops (CNNDetection's
schedule: no validation gain for `patience` epochs -> lr/10; stop below `min_lr`), keeping the
best epoch by the `select` measure (of an exponential moving average of the weights if `ema`).
It checkpoints the full state every epoch and resumes exactly. `train_classifier` is the
experiment's job: it draws the fake side from the frozen train-subset generators.

Augmentation runs off the critical path: `augment_workers` threads prepare the next batches
while the current one trains (`gangaps.data.prefetch`). Each step's augmentation is seeded
by (seed, step), so the trained weights are the same with any number of workers, and a
resume needs no augmentation state.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gangaps.config import ClassifierTrainingConfig
from gangaps.data import to_model_range
from gangaps.data.augment import DetectorAugment
from gangaps.data.prefetch import batch_generator, prefetched
from gangaps.data.sampler import EpochSampler
from gangaps.errors import CorruptFile, NonFiniteLoss, UserError
from gangaps.generators import generate, load_generator
from gangaps.io import append_jsonl, load_resumable, load_state, rng_state, save_state, set_rng_state
from gangaps.metrics.detection import detection_metrics
from gangaps.models.classifiers import GANClassifier, build_classifier, freeze

CHECKPOINT = "checkpoint.safetensors"
FINAL = "classifier.safetensors"


def make_augment(options: dict, seed: int = 0) -> DetectorAugment | None:
    """The detector augmentation of `classifier_training.augment` (None when empty)."""
    if not options:
        return None
    return DetectorAugment.from_config(options, generator=torch.Generator().manual_seed(seed))


def augment_workers(tcfg: ClassifierTrainingConfig, device: torch.device) -> int:
    """classifier_training.augment_workers resolved. auto: inline on CPU (measured: on a busy
    2-core box threads only compete with the step, `benchmarks/classifier_augment_speed.py`);
    on an accelerator the job's CPU threads, idle while the device steps, up to 8."""
    if tcfg.augment_workers != "auto":
        return tcfg.augment_workers
    return 0 if device.type == "cpu" else min(8, max(1, torch.get_num_threads()))


def _split(images: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(images) * val_fraction))
    return images[perm[n_val:]], images[perm[:n_val]]


@torch.no_grad()
def classify(model: torch.nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
             batch_size: int = 256, flip_tta: bool = False, resize: bool = True) -> torch.Tensor:
    """Logits (real > 0) of uint8 images [N, C, H, W], in eval mode; float32 on CPU.

    flip_tta averages the logits of each image and its mirror image (test-time augmentation for
    detectors trained with random flips: both views are in-distribution, their errors differ).
    resize=False: the classifier sees the images at their own size (`GANClassifier.forward`).
    Batches of 256: at 1000 the activations leave the CPU's caches and inference ran 3× slower
    (2,900 against 8,600 img/s for the demo's patch classifier on 2 cores).
    """
    was_training = model.training
    model.eval()
    out = []
    kw = {} if resize else {"resize": False}  # any nn.Module works when resizing, as before
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i:i + batch_size].to(device))
        logits = model(x, **kw).float()
        if flip_tta:
            logits = (logits + model(x.flip(-1), **kw).float()) / 2
        out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out)


def _validate(model, real, fake, device) -> dict[str, float]:
    """Validation measures of the current weights: balanced accuracy, AP and BCE loss."""
    r, f = classify(model, real, device), classify(model, fake, device)
    m = detection_metrics(r, f)
    # Class-balanced loss, like the accuracy: each side counts one half whatever its size.
    loss = 0.5 * (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                  + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
    return {"accuracy": m["accuracy"], "ap": m["ap"], "loss": loss.item()}


def _score(val: dict[str, float], select: str) -> float:
    """Higher is better: the selection measure, loss negated."""
    return -val["loss"] if select == "loss" else val[select]


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # Buffers too (BatchNorm statistics), as timm's ModelEmaV2: the averaged weights then
    # come with statistics that match them.
    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1 - decay)
        else:
            e.copy_(p)


def fit_classifier(model: GANClassifier, real: torch.Tensor, fake: torch.Tensor,
                   tcfg: ClassifierTrainingConfig, seed: int, out_dir: Path,
                   device: torch.device, progress: bool = True, label: str = "",
                   fake_stream: GeneratorStream | None = None) -> dict:
    """Train `model` on uint8 real vs fake images; return a summary. Resumes from out_dir.

    With `fake_stream`, every training batch's fakes are drawn fresh from it and all of `fake`
    is the validation set; otherwise `fake` is a bank, split like `real`.
    """
    real_tr, real_val = _split(real, tcfg.val_fraction, seed)
    if fake_stream is None:
        fake_tr, fake_val = _split(fake, tcfg.val_fraction, seed + 1)
    else:
        fake_tr, fake_val = None, fake
    half = tcfg.batch_size // 2
    n_train = min(len(real_tr), len(fake_tr)) if fake_tr is not None else len(real_tr)
    steps_per_epoch = max(1, n_train // half)
    torch.manual_seed(seed)
    model.to(device).train()
    if tcfg.channels_last:  # before the optimizer and the EMA copy: both follow the weights
        model.to(memory_format=torch.channels_last)
    # AdamW with weight_decay 0 is exactly Adam.
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=(0.9, 0.999),
                            weight_decay=tcfg.weight_decay)
    # The weights that are validated and kept: an exponential moving average when asked.
    ema = copy.deepcopy(model).eval().requires_grad_(False) if tcfg.ema else None
    real_sampler = EpochSampler(len(real_tr), half, seed)
    fake_sampler = EpochSampler(len(fake_tr), half, seed + 7) if fake_tr is not None else None
    augment = make_augment(tcfg.augment, seed)
    # per_step: each step's augmentation seeded by (seed, step); a checkpoint written before
    # that held one sequential stream (augment_rng), which it continues, inline, to stay exact
    seeding, workers = "per_step", augment_workers(tcfg, device)
    pin = device.type == "cuda"  # pinned batches copy to the GPU without blocking the host
    epoch, best_score, best_epoch, bad_epochs = 0, -float("inf"), -1, 0
    best_val: dict[str, float] = {}
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = out_dir / CHECKPOINT
    s = load_resumable(ckpt)  # a damaged newest checkpoint falls back to the previous one
    if s is not None:
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        if ema is not None:
            ema.load_state_dict(s["ema"])
        real_sampler.load_state_dict(s["real_sampler"])
        if fake_sampler is not None:
            fake_sampler.load_state_dict(s["fake_sampler"])
        if augment is not None and s.get("augment_seeding") != "per_step":
            seeding, workers = "stream", 0
            augment.generator.set_state(s["augment_rng"])
        set_rng_state(s["rng"])
        best_state = s["best_state"]
        epoch, best_epoch, bad_epochs = s["epoch"], s["best_epoch"], s["bad_epochs"]
        best_score, best_val = s["best_score"], s["best_val"]

    def batch(step: int, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # the CPU work of a step, on a prefetch thread when workers > 0
        x = torch.cat([r, f])
        if augment is not None:
            x = augment(x, batch_generator(seed, step) if seeding == "per_step" else None)
        return x.pin_memory() if pin else x

    def jobs(epoch: int):  # samplers and the fake stream advance here: in order, this thread
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            r = real_tr[real_sampler.next()]
            # Checkpoints fall on epoch ends, so the global step makes the stream resumable.
            f = fake_tr[fake_sampler.next()] if fake_sampler is not None else \
                fake_stream.draw(half, step)
            yield lambda step=step, r=r, f=f: (batch(step, r, f), len(r), len(f))

    bar = tqdm(total=tcfg.epochs * steps_per_epoch, initial=epoch * steps_per_epoch,
               desc=label or out_dir.name, unit="step", disable=not progress, leave=False,
               dynamic_ncols=True)
    while epoch < tcfg.epochs and opt.param_groups[0]["lr"] >= tcfg.min_lr:
        t0 = time.perf_counter()
        # the epoch's loss sum (float64: as Python floats summed it) and its first non-finite
        # step stay on the device, read once at the epoch's end: no host sync per step
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        first_bad = torch.tensor(steps_per_epoch + 1, device=device)
        for i, (x, n_r, n_f) in enumerate(prefetched(jobs(epoch), workers)):
            # A side smaller than half a batch gives a shorter batch, not a crash.
            target = torch.cat([torch.ones(n_r, device=device),
                                torch.zeros(n_f, device=device)])  # real = 1
            logits = model(to_model_range(x.to(device, non_blocking=True)))
            loss = F.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                _ema_update(ema, model, tcfg.ema)
            loss = loss.detach()
            loss_sum += loss.double()
            first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=i + 1))
            bar.update(1)
        bad_step, loss_sum = int(first_bad), loss_sum.item()
        if bad_step <= steps_per_epoch:  # stop before a checkpoint of garbage is written
            raise NonFiniteLoss(f"{label or 'classifier'} ({out_dir}): training loss is not "
                                f"finite at epoch {epoch + 1}, step {bad_step}; the job stopped "
                                "and its last good checkpoint is kept (try a lower lr)")
        epoch += 1
        kept = ema if ema is not None else model
        val = _validate(kept, real_val, fake_val, device)
        if _score(val, tcfg.select) > best_score + 1e-3:
            best_score, best_val, best_epoch, bad_epochs = _score(val, tcfg.select), val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= tcfg.patience:  # CNNDetection: drop lr by 10, keep going
                for g in opt.param_groups:
                    g["lr"] /= 10
                bad_epochs = 0
        dt = time.perf_counter() - t0
        append_jsonl(out_dir / "log.jsonl", {
            "epoch": epoch, "loss": loss_sum / steps_per_epoch, "val_accuracy": val["accuracy"],
            "val_ap": val["ap"], "val_loss": val["loss"],
            "lr": opt.param_groups[0]["lr"], "img_per_s": round(steps_per_epoch * 2 * half / dt, 1)})
        bar.set_postfix(val_acc=f"{val['accuracy']:.3f}", val_ap=f"{val['ap']:.3f}")
        save_state(ckpt, {
            "model": model.state_dict(), "opt": opt.state_dict(), "best_state": best_state,
            "ema": ema.state_dict() if ema is not None else torch.zeros(1),
            "real_sampler": real_sampler.state_dict(),
            "fake_sampler": fake_sampler.state_dict() if fake_sampler is not None else {},
            "augment_rng": augment.generator.get_state() if seeding == "stream" else torch.zeros(1),
            "augment_seeding": seeding,
            "rng": rng_state(), "epoch": epoch, "best_score": best_score, "best_val": best_val,
            "best_epoch": best_epoch, "bad_epochs": bad_epochs}, keep_previous=True)
    bar.close()
    model.load_state_dict(best_state)
    return {"epochs": epoch, "best_epoch": best_epoch, "select": tcfg.select,
            "val_accuracy": best_val.get("accuracy", float("nan")),
            "val_ap": best_val.get("ap", float("nan")), "val_loss": best_val.get("loss", float("nan")),
            "n_real": len(real), "n_fake": len(fake)}


def save_classifier(path: Path, model: GANClassifier, arch: str, options: dict,
                    in_channels: int, resolution: int, summary: dict) -> None:
    save_state(path, {"spec": {"arch": arch, "options": options, "in_channels": in_channels,
                               "resolution": resolution}, "model": model.state_dict(),
                      "summary": summary})


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> GANClassifier:
    """A trained classifier, frozen (eval mode, no parameter gradients)."""
    state = load_state(path)  # checksum verified; a damaged file raises CorruptFile
    try:
        spec = state["spec"]
        model = build_classifier(spec["arch"], spec["in_channels"], spec["resolution"],
                                 **spec["options"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError, UserError) as e:
        raise CorruptFile(path, f"not a classifier file ({e.__class__.__name__})") from None
    return freeze(model.to(device))


def _even_split(n: int, k: int, offset: int = 0) -> list[int]:
    """n items over k parts, equal up to one; the remainder goes to parts offset, offset+1, …"""
    per = [n // k] * k
    for i in range(n % k):
        per[(offset + i) % k] += 1
    return per


def fake_bank(generator_checkpoints: list[Path], n_fake: int, seed: int,
              device: torch.device) -> torch.Tensor:
    """n_fake uint8 samples split evenly over the frozen generators (seeded per generator)."""
    per = _even_split(n_fake, len(generator_checkpoints))
    parts = [generate(load_generator(p, device), n, seed * 1000 + i, device=device)
             for i, (p, n) in enumerate(zip(generator_checkpoints, per))]
    return torch.cat(parts)


class GeneratorStream:
    """Fakes drawn on the fly: fresh samples for every training batch from frozen generators.

    Each batch is split evenly over the generators (the odd samples rotate, so proportions stay
    equal over steps). Batch `step` depends only on (seed, step), so a resumed training draws
    exactly the samples an uninterrupted one would; its seeds never meet `fake_bank`'s.
    """

    def __init__(self, generator_checkpoints: list[Path], seed: int, device: torch.device) -> None:
        self.generators = [load_generator(p, device) for p in generator_checkpoints]
        self.seed, self.device = seed, device

    def draw(self, n: int, step: int) -> torch.Tensor:
        """n uint8 samples [n, C, H, W] on the CPU for training step `step` (≥ 0)."""
        k = len(self.generators)
        base = 2**40 + (self.seed * 1_000_003 + step) * k
        return torch.cat([generate(g, m, base + i, device=self.device)
                          for i, (g, m) in enumerate(zip(self.generators, _even_split(n, k, step)))
                          if m])


def generator_fakes(generator_checkpoints: list[Path], n_fake: int, fakes: str, val_fraction: float,
                    seed: int, device: torch.device) -> tuple[torch.Tensor, GeneratorStream | None]:
    """The fake side drawn from frozen generators, as `fit_classifier` takes it.

    fakes="bank": n_fake stored samples (split like the real side), no stream. "on_the_fly": a
    stream that draws every training batch fresh, and n_fake × val_fraction stored samples that
    are the validation fakes.
    """
    if fakes == "on_the_fly":
        stream = GeneratorStream(generator_checkpoints, seed, device)
        return fake_bank(generator_checkpoints, max(1, round(n_fake * val_fraction)), seed, device), stream
    return fake_bank(generator_checkpoints, n_fake, seed, device), None


def train_classifier(out_dir: Path, arch: str, options: dict, seed: int,
                     generator_checkpoints: list[Path], real: torch.Tensor,
                     tcfg: ClassifierTrainingConfig, device: torch.device,
                     progress: bool = True, label: str = "") -> dict:
    """The experiment's stage-2 job: train on real vs the train-subset generators, save FINAL."""
    gen = torch.Generator().manual_seed(seed)
    real = real[torch.randperm(len(real), generator=gen)[:tcfg.n_real]]
    fake, stream = generator_fakes(generator_checkpoints, tcfg.n_fake, tcfg.fakes, tcfg.val_fraction,
                                   seed, device)
    torch.manual_seed(seed)  # the initial weights depend on the seed alone, not on earlier jobs
    model = build_classifier(arch, real.shape[1], real.shape[-1], **options)
    summary = fit_classifier(model, real, fake, tcfg, seed, out_dir, device, progress, label, stream)
    save_classifier(out_dir / FINAL, model, arch, options, real.shape[1], real.shape[-1], summary)
    return summary
