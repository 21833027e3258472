"""StyleGAN2 training speed through the real loop: sec/kimg and peak GPU memory per resolution.

Runs `gangaps.train.gan.train_generator` (all four phases, EMA, augmentation, data transfer,
logging) with NVIDIA `--cfg=auto`-like networks (channel_base 16384, channel_max 512,
mapping 2; batch 32 at 64/128 px, 16 at 256 px), bf16 autocast + channels_last on CUDA.
The loop logs img/s every `--window` steps; the first window is warm-up (cuDNN autotuning,
allocator growth, lazy-regularisation phases first seen) and is excluded. sec/kimg counts
real images shown to D, as NVIDIA's logs do.

    python benchmarks/stylegan2_speed.py                     # 64, 128, 256 px on the GPU
    python benchmarks/stylegan2_speed.py --res 64 --windows 5
    python benchmarks/stylegan2_speed.py --tiny              # CPU smoke check, tiny nets
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from gangaps.config import from_dict
from gangaps.train.gan import GeneratorJob, train_generator

AUTO_BATCH = {64: 32, 128: 32, 256: 16}  # NVIDIA auto on 1 GPU: min(4096 // res, 32)


def auto_batch(res: int) -> int:
    return AUTO_BATCH.get(res, max(1, min(4096 // res, 32)))


def measure(res: int, batch: int, options: dict, device: torch.device, window: int,
            windows: int, data: torch.Tensor | None, z_dim: int = 512) -> dict:
    """Train for (1 + windows) · window steps; return timing of the windows after the first."""
    steps = window * (1 + windows)
    kimg = lambda s: s * batch / 1000  # noqa: E731
    r1_gamma = 0.0002 * res**2 / batch
    cfg = from_dict({
        "gan": {"family": "stylegan2", "kimg": kimg(steps), "batch_size": batch, "lr": 0.0025,
                "betas": [0.0, 0.99], "z_dim": z_dim,
                "options": {"r1_gamma": r1_gamma, "ema_kimg": batch * 10 / 32, **options},
                "log_kimg": kimg(window), "checkpoint_kimg": kimg(steps) * 10},
    })
    if data is None:  # synthetic uint8 images: decoding is not what is measured
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, 256, (max(4 * batch, 256), 3, res, res), dtype=torch.uint8,
                             generator=g)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_generator(GeneratorJob(Path(tmp), seed=0), cfg, data, device, progress=False)
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    timed = log[1:]  # the first window is warm-up
    seconds = sum(window * batch / r["img_per_s"] for r in timed)
    images = len(timed) * window * batch
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    from gangaps.models.stylegan2 import Discriminator, Generator
    net = {k: options[k] for k in ("channel_base", "channel_max")}
    g_params = sum(p.numel() for p in Generator(z_dim, options["w_dim"], res, 3,
                                                options["mapping_layers"], **net).parameters())
    d_params = sum(p.numel() for p in Discriminator(res, 3, **net).parameters())
    return {"res": res, "batch": batch, "G_params_M": g_params / 1e6, "D_params_M": d_params / 1e6,
            "sec_per_kimg": 1000 * seconds / images, "img_per_s": images / seconds,
            "peak_mem_GiB": peak, "timed_steps": len(timed) * window, "wall_s": wall,
            "loss_G_last": log[-1].get("loss_G"), "loss_D_last": log[-1].get("loss_D")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", help="resolutions (default 64 128 256; "
                    "--tiny: 16 32)")
    ap.add_argument("--batch", type=int, help="batch size for every resolution (default auto)")
    ap.add_argument("--window", type=int, help="steps per timing window (default 20; tiny 4)")
    ap.add_argument("--windows", type=int, default=3, help="timed windows after the warm-up")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--precision", choices=["bf16", "none"], default="bf16")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--augment", default="diffaugment", choices=["diffaugment", "ada", "none"])
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune "
                    "(NVIDIA's loop does; gangaps' loop leaves the default)")
    ap.add_argument("--data", help="prepared image cache or folder (default: synthetic)")
    ap.add_argument("--tiny", action="store_true", help="tiny networks, CPU-friendly smoke check")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    options = {"w_dim": 512, "mapping_layers": 2, "channel_base": 16384, "channel_max": 512,
               "mixed_precision": args.precision, "channels_last": not args.no_channels_last,
               "augment": args.augment}
    resolutions = args.res or ([16, 32] if args.tiny else [64, 128, 256])
    window = args.window or (4 if args.tiny else 20)
    z_dim = 512
    if args.tiny:
        options.update(w_dim=32, channel_base=256, channel_max=32)
        z_dim = 32

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads)"
    amp = args.precision if device.type == "cuda" else "fp32 (bf16/channels_last: CUDA only)"
    print(f"# StyleGAN2 training speed, {where}, torch {torch.__version__}, {amp}, "
          f"augment {args.augment}, {args.windows}×{window} timed steps after {window} warm-up")
    rows = []
    for res in resolutions:
        batch = args.batch or (8 if args.tiny else auto_batch(res))
        data = None
        if args.data:
            from gangaps.data.images import load_image_dataset
            data = load_image_dataset(args.data, res, 3)
        rows.append(measure(res, batch, options, device, window, args.windows, data, z_dim))
        r = rows[-1]
        if len(rows) == 1:
            print(f"{'res':>5} {'batch':>5} {'G Mparam':>9} {'D Mparam':>9} {'sec/kimg':>9} "
                  f"{'img/s':>8} {'peak GiB':>9} {'wall s':>7}")
        print(f"{r['res']:>5} {r['batch']:>5} {r['G_params_M']:>9.2f} {r['D_params_M']:>9.2f} "
              f"{r['sec_per_kimg']:>9.2f} {r['img_per_s']:>8.1f} {r['peak_mem_GiB']:>9.2f} "
              f"{r['wall_s']:>7.1f}", flush=True)
        if not all(math.isfinite(r[k]) for k in ("loss_G_last", "loss_D_last")):
            print(f"  warning: non-finite loss at {res} px", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
