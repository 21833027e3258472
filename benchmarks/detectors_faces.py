"""Detector architectures on real FFHQ faces vs StyleGAN faces: the maintainers' baseline vs the
detector recipe, held-out accuracy / AP / AUC (bootstrap 95% CI for AP).

Data: /work/shared/data/faces_ffhq256_subset (real/ and stylegan_fake/, 1,100 JPEGs each),
decoded once into uint8 caches (centre crop, Lanczos resize). Split: a random 80/20 split BY
FILE (files are ordered by name, so index = file) with a fixed seed, separately for real and
fake; every network is trained from scratch on the 80 % and tested on the 20 %. The recipe's
validation split (early stopping, lr drops, best epoch) comes out of the 80 %, never the test 20 %.

- baseline: the maintainers' measurement: plain resnet18, random flips only, 12 epochs of Adam
  lr 1e-3 (batch 64, shuffled real+fake), no validation, no early stopping, last epoch.
- recipe: `fit_classifier` (balanced real:fake batches of 64, 12.5 % of the training files held
  out for validation, lr/10 after `patience` epochs without validation gain, stop below
  min_lr, best epoch kept by the `select` measure, optionally of an EMA of the weights) with
  CNNDetection-style augmentation: random crop (or a scale-keeping shift), flip, and Blur+JPEG
  with probability p. Evaluation sees the full, un-augmented test images; recipe rows also report
  AP with flip test-time augmentation (each image scored by the mean logit of it and its mirror).

Every trained network is also measured at native pixels (`evaluate-classifier --no-resize`): the
256 px test files fed whole to networks with a global pool, as the mean logit of tiles of the
training size to a network with a fixed input (flatten/dense heads); the table puts the
resized and the native AP side by side.

One process, one intra-op thread by default. Every finished configuration writes
`<work>/<name>_<px>/result.json` and is skipped on a re-run, so the benchmark resumes; use another
`--work` for another `--seed`.

    python benchmarks/detectors_faces.py                          # all configurations, 64 px
    python benchmarks/detectors_faces.py --only baseline,resnet18 --json out.json
    python benchmarks/detectors_faces.py --resolution 128 --only baseline,resnet18
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gangaps.config import ClassifierTrainingConfig
from gangaps.data import to_model_range
from gangaps.data.augment import DetectorAugment
from gangaps.data.images import cache_name, load_image_dataset, load_native_images, prepare_data
from gangaps.detector_eval import pixels_label, score
from gangaps.io import load_state
from gangaps.metrics.detection import ORACLE, bootstrap_ci, detection_metrics, oracle_accuracy
from gangaps.models.classifiers import build_classifier
from gangaps.train.classifier import CHECKPOINT, classify, fit_classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces_ffhq256_subset"
SIDES = ("real", "stylegan_fake")


@dataclass
class Setup:
    """One benchmarked configuration."""

    name: str
    arch: str
    options: dict[str, Any] = field(default_factory=dict)
    recipe: bool = True
    epochs: int = 20
    crop: int | None = None  # None: 7/8 of the resolution (56 px at 64); 0: no crop
    shift: bool = False  # random crop at full size after reflect-padding by resolution/16 px
    blur_jpeg_prob: float = 0.1
    patience: int = 4
    min_lr: float = 1e-4  # 1e-3, one drop to 1e-4, then stop at the next plateau
    select: str = "accuracy"  # validation measure for early stopping and the kept epoch
    weight_decay: float = 0.0
    ema: float = 0.0


# In the order they were tried; the comments say what each round learned from the one before.
# Epoch caps keep each configuration within CPU minutes; early stopping usually ends the cheap
# ones sooner. resnet18/no_downsample costs ~16× resnet18 per pixel (no stem stride, no
# max-pool), so it trains on 32 px crops (still full 64 px images at test time).
SETUPS = [
    Setup("baseline", "resnet18", recipe=False, epochs=12),
    # first recipe tried: patience 2 dropped the lr on validation noise by epoch 6, while the
    # training loss was still 0.57 (under-fitted); kept as a measured data point
    Setup("resnet18_pat2", "resnet18", epochs=16, patience=2, min_lr=1e-5),
    Setup("resnet18", "resnet18", epochs=24),
    Setup("small_cnn", "small_cnn", epochs=30),
    Setup("spectrum", "spectrum", epochs=30),
    Setup("patch", "patch", {"width": 32}, epochs=10),
    Setup("resnet50", "resnet50", epochs=8),
    Setup("resnet18_nods", "resnet18", {"stem": "no_downsample"}, epochs=3, crop=32),
    Setup("resnet18_p0", "resnet18", epochs=24, blur_jpeg_prob=0.0),  # p chosen by validation
    Setup("resnet18_nocrop", "resnet18", epochs=24, crop=0),
    # Second round. Validation AP instead of threshold accuracy (smoother on 220 images), and
    # ResNet stems that keep more resolution: at 64 px the ImageNet stem leaves layer1 16×16.
    Setup("resnet18_nocrop_ap", "resnet18", epochs=24, crop=0, select="ap"),
    Setup("resnet18_nomaxpool", "resnet18", {"stem": "no_maxpool"}, epochs=20, crop=0, select="ap"),
    # An EMA of the weights (decay 0.99 ≈ a 4-epoch horizon at 24 steps per epoch; 0.995 ≈ 8)
    # smooths the epoch-to-epoch jitter of validation AP that best-epoch selection chases.
    Setup("resnet18_ema", "resnet18", epochs=24, crop=0, select="ap", ema=0.99),
    Setup("resnet18_ema995", "resnet18", epochs=24, crop=0, select="ap", ema=0.995),
    # Crops that keep scale: a random shift of up to 4 px at 64 px (pad 4, crop 64), the crop of
    # CIFAR-style from-scratch training. A harder task needs more epochs, so patience 6.
    Setup("resnet18_shift_ema", "resnet18", epochs=40, crop=0, shift=True, select="ap", ema=0.99,
          patience=6),
    # Shifts hurt, so position carries signal on these aligned faces: heads that keep it, the
    # DCGAN discriminator (flatten + dense) and resnet18 with its last map flattened.
    Setup("dcgan_d_ema", "dcgan_d", epochs=30, crop=0, select="ap", ema=0.99),
    Setup("resnet18_flatten_ema", "resnet18", {"pool": "flatten"}, epochs=24, crop=0, select="ap", ema=0.99),
    # flatten and EMA 0.995 together; both stopped at their 24-epoch cap with validation AP still
    # rising, so a longer cap.
    Setup("resnet18_flatten_ema995", "resnet18", {"pool": "flatten"}, epochs=40, crop=0, select="ap",
          ema=0.995),
    # The other architectures with the final recipe (their first rows used crops and accuracy).
    Setup("small_cnn_ema", "small_cnn", epochs=30, crop=0, select="ap", ema=0.99),
    Setup("spectrum_ema", "spectrum", epochs=30, crop=0, select="ap", ema=0.99),
    Setup("patch_ema", "patch", {"width": 32}, epochs=20, crop=0, select="ap", ema=0.99),
    Setup("resnet18_nomaxpool_ema", "resnet18", {"stem": "no_maxpool"}, epochs=20, crop=0, select="ap",
          ema=0.99),
    # resnet50 with the final recipe (its first row used crops, accuracy and an 8-epoch cap).
    Setup("resnet50_ema", "resnet50", epochs=16, crop=0, select="ap", ema=0.99),
    # The flatten + EMA 0.995 runs drive the training loss to ~0 while validation loss climbs from
    # epoch 14: decoupled weight decay (AdamW; per step the weights shrink by lr × wd) against it.
    Setup("resnet18_flatten_ema995_wd01", "resnet18", {"pool": "flatten"}, epochs=40, crop=0, select="ap",
          ema=0.995, weight_decay=0.1),
    Setup("resnet18_flatten_ema995_wd05", "resnet18", {"pool": "flatten"}, epochs=40, crop=0, select="ap",
          ema=0.995, weight_decay=0.5),
]


def load_faces(data: Path, resolution: int, cache_dir: Path) -> dict[str, torch.Tensor]:
    """uint8 [1100, 3, R, R] per side, decoded once into `cache_dir`."""
    out = {}
    for side in SIDES:
        dst = cache_dir / side
        if not (dst / cache_name(resolution)).is_file():
            prepare_data(data / side, dst, resolution, progress=False)
        out[side] = load_image_dataset(dst, resolution, 3)
    return out


def split_by_file(n: int, seed: int, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) file indices: a seeded random permutation, last 20 % for test."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_fraction)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def train_baseline(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, epochs: int,
                   seed: int, out_dir: Path) -> dict:
    """The maintainers' loop: flips, Adam 1e-3, batch 64 over shuffled real+fake, last epoch."""
    torch.manual_seed(seed)
    x_all = torch.cat([real, fake])
    y_all = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])  # real = 1
    aug = DetectorAugment(flip=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for epoch in range(epochs):
        t0, losses = time.perf_counter(), []
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.binary_cross_entropy_with_logits(model(to_model_range(aug(x_all[idx]))), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with (out_dir / "log.jsonl").open("a") as f:
            f.write(json.dumps({"epoch": epoch + 1, "loss": sum(losses) / len(losses),
                                "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    return {"epochs": epochs, "best_epoch": epochs, "val_accuracy": None}


NATIVE_FIT = "tile"  # fixed-input heads at native pixels: mean logit of tiles of their input size


def native_metrics(model: torch.nn.Module, real: list[torch.Tensor], fake: list[torch.Tensor],
                   resolution: int, n_boot: int, seed: int) -> dict:
    """Test metrics at the files' own pixels (no resize), with `evaluate-classifier --no-resize`'s
    scoring; the same bootstrap seed as the resized AP interval."""
    cpu = torch.device("cpu")
    rl, fl = (score(model, x, cpu, resize=False, fit=NATIVE_FIT) for x in (real, fake))
    fixed = model.input_size if getattr(model, "fixed_input", False) else None
    m = detection_metrics(rl, fl)
    return {"accuracy": m["accuracy"], "ap": m["ap"], "auc": m["auc"], ORACLE: oracle_accuracy(rl, fl),
            "ap_ci95": list(bootstrap_ci(rl, fl, "ap", n_boot, seed=seed)),
            "pixels": pixels_label(False, resolution, [x.shape[-1] for x in real + fake], fixed, NATIVE_FIT)}


def flip_tta_ap(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Test AP with each image scored by the mean logit of it and its mirror image."""
    return detection_metrics(classify(model, real, flip_tta=True), classify(model, fake, flip_tta=True))["ap"]


def run_setup(s: Setup, faces: dict[str, torch.Tensor], splits: dict, resolution: int, seed: int,
              work: Path, n_boot: int, native: dict[str, list[torch.Tensor]] | None = None,
              max_epochs: int | None = None) -> dict:
    """Train one configuration (or reuse its result.json) and measure it on the test files,
    resized and (given `native`, the files' own pixels per side) at native pixels."""
    out_dir = work / f"{s.name}_{resolution}"
    done = out_dir / "result.json"
    real_tr, fake_tr = (faces[k][splits[k][0]] for k in SIDES)
    real_te, fake_te = (faces[k][splits[k][1]] for k in SIDES)
    native_te = None if native is None else [[native[k][i] for i in splits[k][1].tolist()] for k in SIDES]
    if done.is_file():
        result = json.loads(done.read_text())
        missing = ("ap_flip_tta" not in result) or (native_te is not None and "native" not in result)
        if missing and (out_dir / CHECKPOINT).is_file():  # rows measured before these columns
            model = build_classifier(s.arch, 3, resolution, **s.options)
            model.load_state_dict(load_state(out_dir / CHECKPOINT)["best_state"])
            result.setdefault("ap_flip_tta", flip_tta_ap(model, real_te, fake_te))
            if native_te is not None and "native" not in result:
                result["native"] = native_metrics(model.eval(), *native_te, resolution, n_boot, seed)
            done.write_text(json.dumps(result, indent=1))
        return result
    if max_epochs is not None:  # a quick look: fewer epochs, recorded in the row
        s = Setup(**{**s.__dict__, "epochs": min(s.epochs, max_epochs)})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # initial weights from the seed, whatever ran before in this process
    model = build_classifier(s.arch, 3, resolution, **s.options)
    t0 = time.perf_counter()
    if not s.recipe:
        summary, augment = train_baseline(model, real_tr, fake_tr, s.epochs, seed, out_dir), {"flip": True}
    else:
        crop = resolution * 7 // 8 if s.crop is None else s.crop or None
        # CNNDetection's blur σ ∈ [0, 3] is for 256 px images; scaled to ≤ 1 px here, where a
        # σ of 3 would wipe out a 64 px face. JPEG quality keeps its [30, 100].
        augment = {**({"crop": crop} if crop else {}),
                   **({"pad": resolution // 16} if s.shift else {}), "flip": True,
                   "blur_prob": s.blur_jpeg_prob, "blur_sigma": [0.0, 1.0],
                   "jpeg_prob": s.blur_jpeg_prob, "jpeg_quality": [30, 100]}
        tcfg = ClassifierTrainingConfig(n_real=len(real_tr), n_fake=len(fake_tr), val_fraction=0.125,
                                        batch_size=64, lr=1e-3, epochs=s.epochs, patience=s.patience,
                                        min_lr=s.min_lr, augment=augment, select=s.select,
                                        weight_decay=s.weight_decay, ema=s.ema)
        summary = fit_classifier(model, real_tr, fake_tr, tcfg, seed, out_dir, torch.device("cpu"),
                                 progress=sys.stderr.isatty(), label=s.name)
    train_s = time.perf_counter() - t0
    real_logits, fake_logits = classify(model, real_te), classify(model, fake_te)
    m = detection_metrics(real_logits, fake_logits)
    result = {"name": s.name, "arch": s.arch, "options": s.options, "resolution": resolution,
              "recipe": "detector" if s.recipe else "baseline", "augment": augment,
              "shift": s.shift if s.recipe else None,
              "patience": s.patience if s.recipe else None, "min_lr": s.min_lr if s.recipe else None,
              "select": s.select if s.recipe else None,
              "weight_decay": s.weight_decay if s.recipe else None, "ema": s.ema if s.recipe else None,
              "max_epochs": s.epochs, **summary, **m,
              "ap_ci95": list(bootstrap_ci(real_logits, fake_logits, "ap", n_boot, seed=seed)),
              "ap_flip_tta": flip_tta_ap(model, real_te, fake_te) if s.recipe else None,
              ORACLE: oracle_accuracy(real_logits, fake_logits),
              **({"native": native_metrics(model.eval(), *native_te, resolution, n_boot, seed)}
                 if native_te is not None else {}),
              "n_test_real": len(real_te), "n_test_fake": len(fake_te),
              "train_seconds": round(train_s, 1)}
    done.write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict]) -> str:
    base = {r["resolution"]: r["ap"] for r in results if r["recipe"] == "baseline"}
    native = any("native" in r for r in results)
    lines = ["| config | arch (options) | px | augment | select, EMA | epochs (best) | val acc | val AP | "
             "test acc | AP [95% CI] | AUC | ΔAP vs baseline | AP, flip TTA | train s |"
             + (" native pixels | native acc | native AP [95% CI] |" if native else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if native else "")]
    for r in results:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        aug = r["augment"]
        augment = "flip" if r["recipe"] == "baseline" else ", ".join(
            ([f"crop {aug['crop']}"] if "crop" in aug else [])
            + ([f"shift {aug['pad']}"] if "pad" in aug else []) + ["flip", f"B+J {aug['blur_prob']:g}"])
        select = "–" if r["recipe"] == "baseline" else \
            f"{r.get('select') or 'accuracy'}, {r.get('ema') or 'no'}"
        val_acc = f"{r['val_accuracy']:.3f}" if r["val_accuracy"] is not None else "–"
        val_ap = f"{r['val_ap']:.3f}" if r.get("val_ap") is not None else "–"
        delta = f"{r['ap'] - base[r['resolution']]:+.3f}" if r["resolution"] in base else "–"
        tta = f"{r['ap_flip_tta']:.3f}" if r.get("ap_flip_tta") is not None else "–"
        lines.append(
            f"| {r['name']} | {r['arch']}{f' ({opts})' if opts else ''} | {r['resolution']} | {augment} | "
            f"{select} | {r['epochs']} ({r['best_epoch']}) | {val_acc} | {val_ap} | {r['accuracy']:.3f} | "
            f"{r['ap']:.3f} [{r['ap_ci95'][0]:.3f}, {r['ap_ci95'][1]:.3f}] | {r['auc']:.3f} | {delta} | "
            f"{tta} | {r['train_seconds']:.0f} |" + (_native_cells(r.get("native")) if native else ""))
    return "\n".join(lines)


def _native_cells(n: dict | None) -> str:
    if n is None:
        return " – | – | – |"
    lo, hi = n["ap_ci95"]
    return f" {n['pixels']} | {n['accuracy']:.3f} | {n['ap']:.3f} [{lo:.3f}, {hi:.3f}] |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with real/ and stylegan_fake/")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated config names, run in that order "
                    "(default: all): "
                    + ", ".join(s.name for s in SETUPS))
    ap.add_argument("--seed", type=int, default=0, help="split and training seed")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the AP CI")
    ap.add_argument("--work", type=Path, default=Path("runs/detectors_faces"),
                    help="per-configuration outputs (resumable); decoded caches under cache/")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-native", action="store_true",
                    help="skip the native-pixel (256 px, no resize) evaluation beside the resized one")
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="cap every configuration's epochs (a quick look; use another --work)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = [n for n in args.only.split(",") if n] or [s.name for s in SETUPS]
    unknown = set(wanted) - {s.name for s in SETUPS}
    if unknown:
        ap.error(f"unknown config(s) {sorted(unknown)}")
    faces = load_faces(args.data, args.resolution, args.work / "cache")
    # the files' own pixels, in the caches' order (both sorted by file name): index = file
    native = None if args.no_native else {k: load_native_images(args.data / k, 3) for k in SIDES}
    splits = {k: split_by_file(len(v), args.seed + i) for i, (k, v) in enumerate(faces.items())}
    results = []
    by_name = {s.name: s for s in SETUPS}
    for s in (by_name[n] for n in wanted):  # in the order asked for
        r = run_setup(s, faces, splits, args.resolution, args.seed, args.work, args.bootstrap, native,
                      args.max_epochs)
        results.append(r)
        nat = f", native pixels AP {r['native']['ap']:.3f}" if "native" in r else ""
        print(f"{s.name}: acc {r['accuracy']:.3f} AP {r['ap']:.3f} AUC {r['auc']:.3f}{nat} "
              f"({r['train_seconds']:.0f} s)", flush=True)
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
