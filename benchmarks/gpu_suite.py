"""The first thing to run on a lent GPU: every GPU figure gangaps promises, in one script.

    python benchmarks/gpu_suite.py --data-root DATA [--out DIR]       # ≤ 8 min on one H100/H200
    python benchmarks/gpu_suite.py --data-root DATA --dry-run         # CPU, tiny sizes, seconds
    python benchmarks/gpu_suite.py --synthetic                         # no MNIST on the machine

Writes DIR/gpu_suite.json and DIR/gpu_suite.md (DIR: --out, else $OUT, else ./gpu_suite_out),
rewritten atomically after every section, so a suite cut short still leaves what it measured.
Sections, each time-boxed (a share of --budget-s) and failure-isolated (an error or a time-out
is written as that section's `error` and the next section runs):

  env         device, torch, CUDA, visible GPUs, the peak FLOP/s MFU is counted against
  dcgan       fused MNIST DCGAN img/s and MFU, N ∈ {1, 4, 8, 16} × batch 256 per instance,
              fp32/TF32 and bf16 (gan.bf16), eager; the real loop (train_generators)
  dcgan_options  the GPU-path options one at a time, fused N = 8 (dry run 2): gan.rng grouped
              against per-instance, gan.data_on_device on against off, bf16, bf16 +
              channels_last, and gan.compile (--compile-backend) with per-instance draws (the
              graph breaks grouped draws avoid; compiled grouped is dcgan_compiled's N = 8 row)
  dcgan_compiled  the same with gan.compile (N = 8 first: the target)
  iteration   one full configs/mnist-dcgan.yaml iteration, projected: its generators fused as
              the runner groups them on this device, and one epoch of its first classifier
              (augmentation as configured) scaled to all classifiers
  classifier_augment  one epoch of that classifier with Blur+JPEG(0.5) + flips on the host:
              none, inline (classifier_training.augment_workers=0) and on threads (auto)
  stylegan2   s/kimg and peak memory at 64 and 256 px (NVIDIA auto cfg, bf16, channels_last)
  ddp         a 2-rank torchrun data-parallel DCGAN job (only when 2 GPUs are visible)

The measuring loops are those of benchmarks/mnist_dcgan_speed.py and stylegan2_speed.py.
--dry-run: CPU, tiny networks and a few steps, GANGAPS_PEAK_FLOPS injected (1e12) so the MFU
path runs; dcgan_compiled is skipped (inductor's CPU compile alone takes minutes here) and
dcgan_options compiles with aot_eager. Each section's time box is its share of the time left,
over the shares of the sections still to run: time a section leaves unused (ddp on one GPU)
goes to those after it, and the whole stays within --budget-s. Not measured: CUDA graphs
(`mode="reduce-overhead"`): gan.compile takes a backend, no mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_dcgan_speed  # noqa: E402
import stylegan2_speed  # noqa: E402

from gangaps.config import ClassifierTrainingConfig, load_config  # noqa: E402
from gangaps.data import RealData, load_real  # noqa: E402
from gangaps.experiment.jobs import configure_device  # noqa: E402
from gangaps.io import atomic_write_json, atomic_write_text  # noqa: E402
from gangaps.train import distributed as ddp  # noqa: E402
from gangaps.train.speed import PEAK_ENV, peak_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mnist-dcgan.yaml"
# share of the budget each section may use at most (they sum to 1: the budget is the bound)
SHARES = {"env": 0.02, "dcgan": 0.20, "dcgan_options": 0.12, "dcgan_compiled": 0.24,
          "iteration": 0.10, "classifier_augment": 0.06, "stylegan2": 0.20, "ddp": 0.06}


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise SectionTimeout in this (main) thread once `seconds` have passed."""
    def ring(signum, frame):
        raise SectionTimeout(f"timed out after {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- sections: each fills `out` (a dict) as it goes, so a time-out keeps what was measured --
def sec_env(args, device, out: dict) -> None:
    out.update(torch=torch.__version__, cuda=torch.version.cuda, device=str(device),
               name=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
               visible_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
               threads=torch.get_num_threads(), peak_tf32=peak_flops(device, False),
               peak_bf16=peak_flops(device, True), peak_injected=bool(os.environ.get(PEAK_ENV)))


def _dcgan_cfg(args, *extra: str):
    over = [f"data.path={args.data_root}", "gan.tensorboard=false", *extra]
    if args.dry_run:
        over += ["gan.options.width=0.125", "gan.batch_size=16"]
    cfg = load_config(CONFIG, over)
    kimg = args.steps * cfg.gan.batch_size / 1000  # steps per job; 5 log lines, 1 of warm-up
    cfg.gan.kimg, cfg.gan.log_kimg, cfg.gan.checkpoint_kimg = kimg, kimg / 5, kimg * 10
    return cfg


def _mnist(args) -> RealData:
    """MNIST from --data-root, or with --synthetic random uint8 digits of its shape (speed does
    not depend on what the images show)."""
    if not args.synthetic:
        return load_real(_dcgan_cfg(args).data)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8, generator=g)
    return RealData(x, x, x[:10_000], "synthetic")


def _dcgan_sweep(args, device, out: dict, compiled: bool) -> None:
    rows = out.setdefault("rows", [])
    real = _mnist(args).gan_train
    runs = [(n, p) for p in ("tf32", "bf16") for n in args.n]
    if compiled:  # compiling takes long: N = 8 (the target) first, in both dtypes
        runs.sort(key=lambda r: r[0] != 8)
    for n, precision in runs:
        cfg = _dcgan_cfg(args, f"gan.bf16={precision == 'bf16'}", f"gan.compile={compiled}",
                         f"gan.channels_last={args.channels_last}")
        if compiled:
            torch._dynamo.reset()  # each (N, dtype) compiles afresh, below the cache limit
        t0 = time.perf_counter()
        r = mnist_dcgan_speed.fused_speed(cfg, real, device, n)
        cpu_name = {"tf32": "fp32", "bf16": "fp32 (bf16: CUDA only)"}[precision]
        rows.append({"n": n, "precision": precision if device.type == "cuda" else cpu_name,
                     "compiled": compiled, "batch": cfg.gan.batch_size, "steps": args.steps,
                     "img_per_s": round(r["img_per_s"], 1), "mfu": r["mfu"],
                     "wall_s": round(time.perf_counter() - t0, 1)})
        args.save()


def sec_dcgan(args, device, out: dict) -> None:
    _dcgan_sweep(args, device, out, compiled=False)


# (label, overrides): one option changed at a time from the first row
OPTIONS = [("grouped rng", ["gan.rng=grouped"]),
           ("per-instance rng", ["gan.rng=per-instance"]),
           ("data on host", ["gan.rng=grouped", "gan.data_on_device=false"]),
           ("bf16", ["gan.rng=grouped", "gan.bf16=true"]),
           ("bf16 + channels_last", ["gan.rng=grouped", "gan.bf16=true", "gan.channels_last=true"]),
           ("compiled, per-instance rng", ["gan.rng=per-instance", "gan.compile=true"])]


def sec_dcgan_options(args, device, out: dict) -> None:
    rows = out.setdefault("rows", [])
    real = _mnist(args).gan_train
    n = 2 if args.dry_run else 8
    backend = args.compile_backend or ("aot_eager" if args.dry_run else "inductor")
    for label, extra in OPTIONS:
        cfg = _dcgan_cfg(args, "gan.data_on_device=true", *extra,
                         f"gan.compile_backend={backend}")
        if cfg.gan.compile:
            torch._dynamo.reset()
        t0 = time.perf_counter()
        r = mnist_dcgan_speed.fused_speed(cfg, real, device, n)
        g = cfg.gan
        rows.append({"setting": label, "n": n, "rng": g.rng, "data_on_device": g.data_on_device,
                     "bf16": g.bf16, "channels_last": g.channels_last,
                     "compiled": backend if g.compile else None,
                     "img_per_s": round(r["img_per_s"], 1), "mfu": r["mfu"],
                     "vs_first": round(r["img_per_s"] / rows[0]["img_per_s"], 3) if rows else 1.0,
                     "wall_s": round(time.perf_counter() - t0, 1)})
        args.save()


def sec_dcgan_compiled(args, device, out: dict) -> None:
    if args.dry_run:
        out["skipped"] = "dry run (inductor's CPU compile takes minutes)"
        return
    _dcgan_sweep(args, device, out, compiled=True)


def sec_iteration(args, device, out: dict) -> None:
    from gangaps.models.classifiers import build_classifier
    from gangaps.train.classifier import fit_classifier
    from gangaps.train.gan import group_size
    full = load_config(CONFIG, [f"data.path={args.data_root}"])
    n_inst, size = full.experiment.instances, group_size(full.gan, device, full.experiment.instances)
    cfg = _dcgan_cfg(args)
    real = _mnist(args)
    gen = mnist_dcgan_speed.fused_speed(cfg, real.gan_train, device, size)
    gen_s = n_inst * full.gan.kimg * 1000 / gen["img_per_s"]
    out.update(instances=n_inst, group_size=size, generator_img_per_s=round(gen["img_per_s"], 1),
               generator_s=round(gen_s, 1))
    args.save()
    t = full.classifier_training
    n = 256 if args.dry_run else 5000
    tcfg = ClassifierTrainingConfig(**{**t.model_dump(), "epochs": 1, "n_real": n, "n_fake": n})
    spec = full.classifiers[0]
    x = real.classifier_train[:n]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_classifier(spec.arch, real.channels, real.resolution, **spec.options)
        fit_classifier(model, x, x.flip(-1), tcfg, 0, Path(tmp), device, progress=False)
        ips = json.loads((Path(tmp) / "log.jsonl").read_text().splitlines()[-1])["img_per_s"]
    # a classifier's epoch: both sides of the balanced training split
    per_epoch = 2 * min(t.n_real, t.n_fake) * (1 - t.val_fraction)
    n_clf = sum(len(s.seeds) for s in full.classifiers)
    clf_s = n_clf * t.epochs * per_epoch / ips
    out.update(classifier_img_per_s=ips, classifiers=n_clf, classifier_s=round(clf_s, 1),
               projected_iteration_s=round(gen_s + clf_s, 1),
               not_counted="fake banks, sampling and evaluation (FID); early stopping")


def sec_classifier_augment(args, device, out: dict) -> None:
    from gangaps.models.classifiers import build_classifier
    from gangaps.train.classifier import augment_workers, fit_classifier
    full = load_config(CONFIG, [f"data.path={args.data_root}"])
    spec, n = full.classifiers[0], 256 if args.dry_run else 5000
    x = _mnist(args).classifier_train[:n]
    # CNNDetection's Blur+JPEG(0.5) with flips; σ ≤ 1 px at 28 px (its [0, 3] is for 256 px)
    aug = {"flip": True, "blur_prob": 0.5, "blur_sigma": [0.0, 1.0], "jpeg_prob": 0.5}
    rows, weights = out.setdefault("rows", []), []
    threads = 2 if args.dry_run else "auto"  # on CPU auto is inline: the dry run takes threads
    for label, augment, workers in (("none", {}, 0), ("inline", aug, 0), ("threads", aug, threads)):
        tcfg = ClassifierTrainingConfig(**{**full.classifier_training.model_dump(), "epochs": 1,
                                           "n_real": n, "n_fake": n, "augment": augment,
                                           "augment_workers": workers})
        torch.manual_seed(0)
        model = build_classifier(spec.arch, x.shape[1], x.shape[-1], **spec.options)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            fit_classifier(model, x, x.flip(-1), tcfg, 0, Path(tmp), device, progress=False)
            wall = time.perf_counter() - t0
            ips = json.loads((Path(tmp) / "log.jsonl").read_text().splitlines()[-1])["img_per_s"]
        if augment:
            weights.append(model.state_dict())
        rows.append({"augment": label, "augment_workers": augment_workers(tcfg, device),
                     "img_per_s": ips, "epoch_s": round(wall, 2)})
        args.save()
    # exact on CPU (tested); on CUDA autotuned kernels may differ run to run
    out["same_weights"] = all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())


def sec_stylegan2(args, device, out: dict) -> None:
    rows = out.setdefault("rows", [])
    options = {"w_dim": 512, "mapping_layers": 2, "channel_base": 16384, "channel_max": 512,
               "mixed_precision": "bf16", "channels_last": True, "augment": "diffaugment"}
    z_dim, window, windows, resolutions = 512, 10, 2, (64, 256)
    if args.dry_run:
        options.update(w_dim=32, channel_base=256, channel_max=32)
        z_dim, window, windows, resolutions = 32, 1, 1, (8, 16)
    for res in resolutions:
        batch = 4 if args.dry_run else stylegan2_speed.auto_batch(res)
        r = stylegan2_speed.measure(res, batch, options, device, window, windows, None, z_dim)
        rows.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
        args.save()


def sec_ddp(args, device, out: dict) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2 and not args.ddp_cpu:
        out["skipped"] = f"{gpus} GPU(s) visible: a 2-rank step needs 2"
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, "--ddp-worker", tmp, "--data-root", str(args.data_root),
               "--steps", str(args.steps)] + (["--dry-run"] if args.dry_run else []) + \
            (["--synthetic"] if args.synthetic else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                            os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            raise RuntimeError(f"torchrun exited {res.returncode}: {res.stderr[-600:]}")
        out.update(json.loads((Path(tmp) / "ddp.json").read_text()))


def ddp_worker(args) -> None:
    """One rank of the `ddp` section: one data-parallel DCGAN job (gan.batch_size global)."""
    from gangaps.train.gan import GeneratorJob, train_generator
    device = ddp.init_from_env("cpu" if args.dry_run else "auto")
    configure_device(device)
    cfg = _dcgan_cfg(args)
    real = _mnist(args).gan_train
    out = Path(args.ddp_worker)
    t0 = time.perf_counter()
    train_generator(GeneratorJob(out / "gen", seed=0, data_parallel=True), cfg, real, device,
                    progress=False)
    if ddp.rank() == 0:
        atomic_write_json(out / "ddp.json", {
            "world_size": ddp.world_size(), "device": str(device), "batch": cfg.gan.batch_size,
            "img_per_s": mnist_dcgan_speed.steady(out / "gen"),
            "mfu": mnist_dcgan_speed.steady(out / "gen", "mfu"),
            "wall_s": round(time.perf_counter() - t0, 1)})
    ddp.shutdown()


SECTIONS = {"env": sec_env, "dcgan": sec_dcgan, "dcgan_options": sec_dcgan_options,
            "dcgan_compiled": sec_dcgan_compiled, "iteration": sec_iteration,
            "classifier_augment": sec_classifier_augment, "stylegan2": sec_stylegan2,
            "ddp": sec_ddp}


# -- output -----------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(result: dict) -> str:
    lines = [f"# gangaps GPU suite ({'dry run, ' if result['dry_run'] else ''}"
             f"{result['sections'].get('env', {}).get('name', result['device'])})", "",
             f"`{result['command']}`, started {result['started']}, {result['elapsed_s']:.0f} s", ""]
    for name, sec in result["sections"].items():
        lines.append(f"## {name} ({sec.get('seconds', 0):.0f} s)")
        if "error" in sec:
            lines.append(f"**error**: {sec['error']}")
        if "skipped" in sec:
            lines.append(f"skipped: {sec['skipped']}")
        rows = sec.get("rows")
        if rows:
            keys = list(rows[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
        shown = ("rows", "error", "skipped", "seconds", "traceback")
        scalars = {k: v for k, v in sec.items() if k not in shown}
        if scalars:
            lines += [""] + [f"- {k}: {_fmt(v)}" for k, v in scalars.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("GANGAPS_DATA_ROOT", "data"))
    ap.add_argument("--out", type=Path, help="default $OUT, else ./gpu_suite_out")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: seconds")
    ap.add_argument("--synthetic", action="store_true", help="random uint8 images of MNIST's "
                    "shape instead of --data-root's MNIST (a machine without the data)")
    ap.add_argument("--budget-s", type=float, default=470, help="the whole suite's wall bound")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), help="these sections only")
    ap.add_argument("--n", type=int, nargs="+", help="fused instances (default 1 4 8 16)")
    ap.add_argument("--steps", type=int, help="steps per DCGAN job (default 100; dry run 5)")
    ap.add_argument("--channels-last", action="store_true", help="DCGAN with gan.channels_last")
    ap.add_argument("--ddp-cpu", action="store_true", help="run the ddp section over gloo")
    ap.add_argument("--compile-backend", help="dcgan_options' gan.compile_backend (default "
                    "inductor; dry run aot_eager)")
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.n = args.n or ([1, 2] if args.dry_run else [1, 4, 8, 16])
    args.steps = args.steps or (5 if args.dry_run else 100)
    if args.dry_run:
        os.environ.setdefault(PEAK_ENV, "1e12")
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    configure_device(device)  # TF32 and cuDNN autotuning, as the runner sets them
    out_dir = args.out or Path(os.environ.get("OUT") or "gpu_suite_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    result = {"command": " ".join(["python", "benchmarks/gpu_suite.py", *(argv or sys.argv[1:])]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
              "dry_run": args.dry_run, "device": str(device), "budget_s": args.budget_s,
              "elapsed_s": 0.0,
              "sections": {}}

    def save() -> None:
        result["elapsed_s"] = round(time.time() - t_start, 1)
        atomic_write_json(out_dir / "gpu_suite.json", result)
        atomic_write_text(out_dir / "gpu_suite.md", markdown(result))

    args.save = save
    names = args.only or list(SECTIONS)
    for i, name in enumerate(names):
        sec: dict = {}
        result["sections"][name] = sec
        left = args.budget_s - (time.time() - t_start)
        # this section's share of what is left: time earlier sections did not use is passed on
        box = left * SHARES[name] / sum(SHARES[n] for n in names[i:])
        t0 = time.perf_counter()
        try:
            if left <= 1:
                raise SectionTimeout("no budget left")
            with time_box(min(box + 5, left)):
                SECTIONS[name](args, device, sec)
        except Exception as e:  # a failing section is written down and the next one runs
            sec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
            sec["traceback"] = traceback.format_exc()[-1500:]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        sec["seconds"] = round(time.perf_counter() - t0, 1)
        save()
        print(f"{name}: {sec.get('error') or sec.get('skipped') or 'done'} ({sec['seconds']:.0f} s)",
              flush=True)
    print(f"wrote {out_dir / 'gpu_suite.json'} and {out_dir / 'gpu_suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
