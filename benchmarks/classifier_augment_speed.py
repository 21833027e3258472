"""Classifier epoch time with Blur+JPEG augmentation inline vs on prefetch threads (issue 16, 12b).

    OMP_NUM_THREADS=1 python benchmarks/classifier_augment_speed.py
    python benchmarks/classifier_augment_speed.py --arch resnet18 --resolution 64 --epochs 2

Trains `fit_classifier` on the faces pair of ../shared/data (real vs StyleGAN, decoded once
to --resolution under /tmp) with CNNDetection's Blur+JPEG(0.5) + flip, side by side in one
process: no augmentation, augmentation inline (augment_workers=0) and on 1 and 2 threads.
Prints seconds per epoch (validation included) and the augmentation's own cost per epoch
(the same batches augmented without training), and checks that every augmented row ends
with the same weights. The cheap small_cnn step stands in for a GPU step, where the host-side
augmentation is what the step would wait for.

Measured on the shared 2-core box, two other training processes running (so no core was
idle), `OMP_NUM_THREADS=1 python benchmarks/classifier_augment_speed.py`: 1.47 s an epoch
without augmentation, 1.57 inline, 1.81 on 1 thread, 1.86 on 2 (the augmentation alone 0.65 s
on one thread); weights identical in every augmented row. With no idle core, threads only
compete with the step, hence `augment_workers: auto` = inline on CPU. The overlap they are for
needs free cores beside an accelerator: `benchmarks/gpu_suite.py` measures it there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gangaps.config import ClassifierTrainingConfig
from gangaps.data.images import cache_name, load_image_dataset, prepare_data
from gangaps.data.prefetch import batch_generator
from gangaps.models.classifiers import build_classifier
from gangaps.train.classifier import fit_classifier, make_augment

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces_ffhq256_subset"
AUGMENT = {"flip": True, "blur_prob": 0.5, "blur_sigma": [0.0, 3.0], "jpeg_prob": 0.5,
           "jpeg_quality": [30, 100]}


def faces(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for side in ("real", "stylegan_fake"):
        dst = Path(tempfile.gettempdir()) / "gangaps-bench-faces" / side
        if not (dst / cache_name(resolution)).is_file():
            prepare_data(DATA / side, dst, resolution, progress=False)
        out.append(load_image_dataset(dst, resolution, 3))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=4, help="small_cnn width (a cheap step)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the settings; the "
                    "fastest of each is shown (the settings interleave, so a load shift hits all)")
    args = ap.parse_args()
    real, fake = faces(args.resolution)
    base = ClassifierTrainingConfig(n_real=len(real), n_fake=len(fake), batch_size=args.batch_size,
                                    lr=1e-4, epochs=args.epochs, patience=10)
    options = {"width": args.width} if args.arch == "small_cnn" else {}
    settings = {"no augmentation": None, "inline (augment_workers=0)": 0,
                "1 thread (augment_workers=1)": 1, "2 threads (augment_workers=2)": 2}
    times: dict[str, float] = {}
    weights = {}
    for _ in range(args.repeats):
        for name, workers in settings.items():
            tcfg = base.model_copy(update={"augment": AUGMENT if workers is not None else {},
                                           "augment_workers": workers or 0})
            torch.manual_seed(0)
            model = build_classifier(args.arch, 3, args.resolution, **options)
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                fit_classifier(model, real, fake, tcfg, 0, Path(out), torch.device("cpu"),
                               progress=False)
                dt = (time.perf_counter() - t0) / args.epochs
            times[name] = min(times.get(name, dt), dt)
            if workers is not None:
                weights[name] = model.state_dict()
    rows = list(times.items())
    # the augmentation alone, on batches of the same size: what the inline row pays per epoch
    aug, half = make_augment(AUGMENT), args.batch_size // 2
    steps = int(len(real) * 0.9) // half
    x = torch.cat([real[:half], fake[:half]])
    t0 = time.perf_counter()
    for step in range(steps):
        aug(x, batch_generator(0, step))
    rows.append(("augmentation alone, one thread", time.perf_counter() - t0))
    first = next(iter(weights.values()))
    same = all(torch.equal(v, w[k]) for w in weights.values() for k, v in first.items())
    print(f"{args.arch} at {args.resolution} px, batch {args.batch_size}, {steps} steps an epoch, "
          f"{torch.get_num_threads()} torch thread(s); augmented weights identical: {same}")
    print("| setting | s / epoch |\n|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} |")


if __name__ == "__main__":
    main()
