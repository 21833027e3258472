"""`gangaps metrics`: FID, KID and precision/recall of generators or images, with a protocol.

SOURCE is a run directory (every finished generator, or one with --iteration/--instance), a
generator checkpoint (ours, or converted from NVIDIA's with convert-nvidia) or a folder of
images. The reference is the run's own data by default, or --reference mnist | a folder of
images (read as is, as torch-fidelity reads a folder) | a dataset (a zip or a prepare-data
cache, read at the fakes' resolution). Protocols and features: `gangaps.metrics.protocols`.
Results: one JSON file (default RUN/metrics/<protocol>-<features>.json) and a table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gangaps.errors import UserError
from gangaps.metrics.inception import FEATURE_LAYER, IMAGE_EXTS
from gangaps.metrics.protocols import (
    PROTOCOLS,
    Protocol,
    get_protocol,
    inception_set_metrics,
    lenet_metrics,
    parse_metrics,
)

DEFAULT_N = 10_000  # fakes (heldout, outside a run) and held-out reals of a dataset reference

EPILOG = """\
protocols:
""" + "\n".join(f"  {p.name}: {p.text}" for p in PROTOCOLS.values()) + """

features: lenet (28x28 gray, MNIST; FID as the in-run FID(LeNet)) or inception (torch-fidelity's
InceptionV3, layer 2048; weights: --inception-weights FILE, else the run's
evaluation.inception_weights, else torch-fidelity's file downloaded once to the torch hub
cache). Precision/recall: torch-fidelity's prc (k=3) on the same features as the FID (its own
calculate_metrics default for prc is VGG16 features, so compare like with like).

examples:
  gangaps metrics runs/demo                                 # every generator, heldout, LeNet
  gangaps metrics runs/faces --protocol fid50k_full --iteration 0 --instance 1
  gangaps metrics ffhq.safetensors --reference /data/ffhq256.zip --protocol fid50k_full
  gangaps metrics fakes/ --reference reals/ --metrics fid,kid --features inception"""


@dataclass
class Fakes:
    label: str
    images: Callable[[], Iterable[torch.Tensor]] | Path  # uint8 batches, or a folder
    shape: tuple[int, int, int]  # C, H, W
    info: dict[str, Any]


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UserError(f"no {'/'.join(IMAGE_EXTS)} images in {folder}")
    return files


def _folder_shape(folder: Path) -> tuple[int, int, int]:
    from PIL import Image
    with Image.open(_folder_files(folder)[0]) as im:
        return (1 if im.mode in ("L", "I", "I;16") else 3, im.height, im.width)


def _folder_tensor(folder: Path, gray: bool) -> torch.Tensor:
    """uint8 [N, C, H, W] of a flat folder of images (PIL, as torch-fidelity reads them)."""
    from PIL import Image
    arrays = []
    for p in _folder_files(folder):
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("L" if gray else "RGB")))
    if len({a.shape for a in arrays}) != 1:
        raise UserError(f"images in {folder} differ in size; resize them first")
    x = torch.from_numpy(np.stack(arrays))
    return x.unsqueeze(1) if gray else x.permute(0, 3, 1, 2).contiguous()


def _is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())


# ------------------------------------------------------------------------------ fakes


def _generator_fakes(G: torch.nn.Module, spec: dict, label: str, n: int, seed: int,
                     args: argparse.Namespace, device: torch.device, info: dict) -> Fakes:
    from gangaps.generators import iter_samples
    return Fakes(label, lambda: iter_samples(G, n, seed, args.batch_size, device),
                 (spec["channels"], spec["resolution"], spec["resolution"]),
                 {**info, "n_fake": n, "seed": seed})


def _run_fakes(run: Path, args: argparse.Namespace, protocol: Protocol,
               device: torch.device) -> tuple[list[Fakes], Any]:
    from gangaps.experiment.plan import derive_seed, generator_split
    from gangaps.experiment.store import RunStore
    from gangaps.generators import load_generator, load_generator_state
    from gangaps.train.gan import CHECKPOINT
    cfg = RunStore(run).load_config()
    store = RunStore(run, cfg.experiment.reuse_iteration0)
    e = cfg.experiment
    if (args.iteration is None) != (args.instance is None):
        raise UserError("give both --iteration K and --instance I, or neither (all generators)")
    pairs = ([(args.iteration, args.instance)] if args.iteration is not None else
             [(k, n) for k in range(e.iterations) for n in range(e.instances)])
    n_fake = args.n_fake or protocol.n_fake or cfg.evaluation.n_fake
    out = []
    for k, n in pairs:
        if not (0 <= k < e.iterations and 0 <= n < e.instances):
            raise UserError(f"{run} has iterations 0..{e.iterations - 1} and instances "
                            f"0..{e.instances - 1}; got --iteration {k} --instance {n}")
        job = store.generator_dir(k, n)
        if not store.is_done(job):
            if args.iteration is not None:
                raise UserError(f"{job} is not finished yet")
            continue
        spec = load_generator_state(job / CHECKPOINT)["spec"]
        G = load_generator(job / CHECKPOINT, device)
        # the in-run evaluation's seed: `--protocol heldout` repeats the run's own numbers
        out.append(_generator_fakes(G, spec, f"iter {k} gen {n:02d}", n_fake,
                                    derive_seed(cfg.seed, "eval", k, n), args, device,
                                    {"iteration": k, "instance": n,
                                     "split": generator_split(cfg, n)}))
    if not out:
        raise UserError(f"{run}: no finished generator yet")
    return out, cfg


def _fakes(source: Path, args: argparse.Namespace, protocol: Protocol,
           device: torch.device) -> tuple[list[Fakes], Any]:
    """The image sets to measure and, for a run, its config."""
    if source.is_dir() and (source / "config.yaml").is_file():
        return _run_fakes(source, args, protocol, device)
    if args.iteration is not None or args.instance is not None:
        raise UserError("--iteration and --instance are for a run directory")
    if source.is_file():
        from gangaps.generators import load_generator, load_generator_state
        spec = load_generator_state(source)["spec"]
        G = load_generator(source, device)
        n = args.n_fake or protocol.n_fake or DEFAULT_N
        return [_generator_fakes(G, spec, source.name, n, args.seed, args, device,
                                 {"checkpoint": str(source)})], None
    if _is_image_folder(source):
        n = len(_folder_files(source))
        if args.n_fake and args.n_fake != n:
            raise UserError(f"--n-fake {args.n_fake}: {source} holds {n} images (all are used)")
        return [Fakes(source.name, source, _folder_shape(source),
                      {"folder": str(source), "n_fake": n})], None
    raise UserError(f"{source}: not a run directory, a generator checkpoint or a folder of "
                    f"{'/'.join(IMAGE_EXTS)} images")


# ------------------------------------------------------------------------------ reals


def _reference(args: argparse.Namespace, protocol: Protocol, cfg, shape: tuple[int, int, int],
               features: str) -> tuple[torch.Tensor | Path, str, str]:
    """(real images: uint8 tensor or a folder, a description, a cache key)."""
    from gangaps.config import DataConfig
    from gangaps.data import load_real
    ref = args.reference
    if ref is None and cfg is None:
        raise UserError("--reference mnist | FOLDER | DATASET is needed outside a run directory")
    if ref is not None and ref != "mnist" and _is_image_folder(Path(ref)):
        folder = Path(ref)
        if features == "lenet":
            return _folder_tensor(folder, gray=True), f"folder {folder}", ""
        return folder, f"folder {folder} (all {len(_folder_files(folder))} images)", ""
    if ref is None:
        data = cfg.data
    elif ref == "mnist":
        data = DataConfig(dataset="mnist", path=args.data_root)
    else:
        c, h, _ = shape
        data = DataConfig(dataset="images", path=ref, resolution=h, channels=c,
                          heldout_real=args.n_real or DEFAULT_N)
    real = load_real(data)
    if protocol.real == "full":
        images = real.gan_train
        what = f"{real.name}: all {len(images)} images"
    else:
        n_real = args.n_real or (cfg.evaluation.n_real if cfg is not None and ref is None
                                 else DEFAULT_N)
        images = real.eval_real[:n_real]
        what = f"{real.name}: {len(images)} held-out images"
    # the in-run evaluation's cache key for the held-out reals, so both share one cache entry
    key = f"{real.name}-{'full' if protocol.real == 'full' else 'heldout'}{len(images)}"
    return images, what, key


# ------------------------------------------------------------------------------ command


def _features(args: argparse.Namespace, cfg, shape: tuple[int, int, int]) -> str:
    if args.features != "auto":
        return args.features
    if cfg is not None and cfg.evaluation.fid in ("lenet", "inception"):
        return cfg.evaluation.fid
    return "lenet" if shape == (1, 28, 28) else "inception"


def _batches(x: torch.Tensor, size: int) -> Callable[[], Iterable[torch.Tensor]]:
    return lambda: (x[i:i + size] for i in range(0, len(x), size))


def cmd_metrics(args: argparse.Namespace) -> None:
    from gangaps.experiment.jobs import resolve_device
    from gangaps.io import atomic_write_json
    protocol = get_protocol(args.protocol)
    metrics = parse_metrics(args.metrics)
    if args.batch_size < 1 or (args.n_fake is not None and args.n_fake < 2) or \
            (args.n_real is not None and args.n_real < 2):
        raise UserError("--batch-size must be >= 1, --n-fake and --n-real >= 2")
    device = resolve_device(args.device)
    source = Path(args.source)
    fakes, cfg = _fakes(source, args, protocol, device)
    features = _features(args, cfg, fakes[0].shape)
    weights = args.inception_weights or (cfg.evaluation.inception_weights if cfg else None)
    real, real_what, key = _reference(args, protocol, cfg, fakes[0].shape, features)
    records = []
    for f in fakes:
        if features == "lenet":
            images = f.images
            if isinstance(images, Path):
                images = _batches(_folder_tensor(images, gray=True), args.batch_size)
            values = lenet_metrics(images, real, metrics, device, args.data_root)
        else:
            values = inception_set_metrics(f.images, real, metrics, weights, device,
                                           key or None, args.feature_layer)
        details = values.pop("protocol")
        records.append({"source": f.label, **f.info, "protocol": protocol.name,
                        "protocol_text": protocol.text, "features": features,
                        "n_fake": details["n_fake"], "n_real": details["n_real"],
                        "reference": real_what, "metrics": values, "details": details})
        if not args.quiet:
            print(f"{f.label}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()),
                  flush=True)
    out = Path(args.out) if args.out else (
        source / "metrics" / f"{protocol.name}-{features}.json" if cfg is not None
        else Path(f"metrics-{protocol.name}-{features}.json"))
    atomic_write_json(out, {"source": str(source), "protocol": protocol.name,
                            "features": features, "reference": real_what, "records": records})
    print(table(records))
    print(f"wrote {out}")


def table(records: list[dict]) -> str:
    """One row per image set: source, protocol, n, then every metric."""
    names = list(dict.fromkeys(k for r in records for k in r["metrics"]))
    head = ["source", "protocol", "features", "n_fake", "n_real", *names]
    rows = [[r["source"], r["protocol"], r["features"], str(r["n_fake"]), str(r["n_real"]),
             *(f"{r['metrics'][k]:.5g}" if k in r["metrics"] else "-" for k in names)]
            for r in records]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
                     for row in [head, *rows])


def add_metrics_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="FID, KID, precision/recall of a run, a generator "
                       "checkpoint or a folder of images, with a named protocol",
                       description=__doc__.split("\n\n")[1].replace("\n", " "), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run directory, generator checkpoint (ours or converted), "
                   "or folder of images")
    p.add_argument("--reference", help="mnist | folder of images | dataset (zip, prepare-data "
                   "cache); default: the run's data")
    p.add_argument("--protocol", default="heldout", choices=list(PROTOCOLS))
    p.add_argument("--metrics", default="fid,kid,prc", help="comma-separated: fid,kid,prc")
    p.add_argument("--features", default="auto", choices=["auto", "inception", "lenet"],
                   help="auto: the run's evaluation.fid; else lenet for 28x28 gray, inception")
    p.add_argument("--iteration", type=int, help="with a run directory: one iteration K ...")
    p.add_argument("--instance", type=int, help="... and instance I (default: every generator)")
    p.add_argument("--n-fake", type=int, help="override the protocol's number of fakes")
    p.add_argument("--n-real", type=int, help="override the number of held-out reals")
    p.add_argument("--seed", type=int, default=0, help="latent seed of a checkpoint's samples "
                   "(a run's generators use the in-run evaluation's seeds)")
    p.add_argument("--inception-weights", metavar="FILE", help="local Inception weights "
                   "(preferred); default: the run's, else torch-fidelity's download")
    p.add_argument("--feature-layer", default=FEATURE_LAYER, choices=["64", "192", "768", "2048"],
                   help="Inception layer (2048 is the standard; others only for quick checks)")
    p.add_argument("--out", help="JSON file (default RUN/metrics/<protocol>-<features>.json, "
                   "else ./metrics-<protocol>-<features>.json)")
    p.add_argument("--data-root", help="folder with the MNIST idx files; also $GANGAPS_DATA_ROOT")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_metrics)
