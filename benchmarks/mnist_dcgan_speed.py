"""Training throughput of the MNIST DCGAN (img/s), with and without the fool term.

    python benchmarks/mnist_dcgan_speed.py --data-root ../shared/data [--device cuda] [--kimg 20]

Prints one row per setting and the projected wall time of one full `mnist-dcgan` iteration
(10 instances × 3000 kimg, generator training only) at that speed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gangaps.config import load_config
from gangaps.data import load_real
from gangaps.models.classifiers import build_classifier
from gangaps.train.gan import GeneratorJob, train_generator

ROOT = Path(__file__).resolve().parents[1]


def measure(cfg, real, device, fool: int) -> tuple[float, float]:
    classifiers = [build_classifier("small_cnn", 1, 28).to(device) for _ in range(fool)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_generator(GeneratorJob(Path(tmp), seed=0, fool_classifiers=classifiers), cfg, real,
                        device, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        log = [json.loads(x) for x in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    steady = [r["img_per_s"] for r in log[1:]] or [log[-1]["img_per_s"]]  # first line: warm-up
    return sum(steady) / len(steady), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kimg", type=float, default=20.0, help="images per measurement (thousands)")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml",
                      [f"data.path={args.data_root}", f"gan.kimg={args.kimg}",
                       f"gan.log_kimg={args.kimg / 5}", f"gan.checkpoint_kimg={args.kimg}"])
    real = load_real(cfg.data).gan_train
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.gan.batch_size}")
    print(f"{'setting':<28}{'img/s':>10}{'full iteration (10 × 3000 kimg)':>36}")
    for fool in (0, 1, 2):
        ips, _ = measure(cfg, real, device, fool)
        hours = cfg.experiment.instances * 3000e3 / ips / 3600  # the config's full length
        print(f"{f'DCGAN, fooling {fool} classifier(s)':<28}{ips:>10.0f}{hours:>30.2f} h")


if __name__ == "__main__":
    main()
