"""`train-classifier` and `evaluate-classifier`: the detector workflow outside the loop.

`gangaps train-classifier` trains any registered GAN-classifier architecture on a folder of real
images against a folder of fakes (or against samples of a run's frozen generators), with
CNNDetection's recipe available as flags (random crop, flip, Blur+JPEG with a probability,
validation split, early stopping with lr/10 drops, best epoch kept). Re-running the same
command resumes. `gangaps evaluate-classifier` scores a trained classifier on a real and a fake
folder and prints accuracy, real/fake recall, AP and AUC with bootstrap 95 % intervals, as
CNNDetection's `demo_dir.py` does (fake = positive class for AP/AUC).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from gangaps.config import ClassifierTrainingConfig
from gangaps.data.augment import DetectorAugment
from gangaps.data.images import IMAGE_EXTENSIONS, cache_name, load_image_dataset, read_cache_meta
from gangaps.errors import UserError
from gangaps.io import atomic_write_json, read_json
from gangaps.models.classifiers import ARCHITECTURES, build_classifier
from gangaps.train.classifier import FINAL, fit_classifier, generator_fakes, save_classifier

FITS = ("crop", "tile")  # --no-resize with a fixed-input network (gangaps.detector_eval)
SETTINGS = "settings.json"
SUMMARY = "summary.json"

FOLDERS = """\
image sources: each of --real and --fake is a folder of images (searched recursively; jpg,
png, webp, ...), a .zip of images, or a cache written by `gangaps prepare-data` (the .safetensors
file or the folder holding it). Images are centre-cropped to square and resized (Lanczos) to
--resolution. A CNNDetection-style dataset DIR/0_real, DIR/1_fake is used as
--real DIR/0_real --fake DIR/1_fake."""

TRAIN_EPILOG = FOLDERS + """

outputs in --out: classifier.safetensors (the best epoch; load with
gangaps.train.classifier.load_classifier), log.jsonl (one line per epoch: loss, validation
accuracy, lr), summary.json (epochs, best epoch, validation accuracy, settings),
checkpoint.safetensors (full training state). Running the same command again resumes an
interrupted training, or does nothing if it finished; different settings need a new --out.

examples:
  gangaps train-classifier --real faces/real --fake faces/stylegan --out clf/r18 \\
      --arch resnet18 --crop 56 --flip --blur-prob 0.1 --jpeg-prob 0.1
  gangaps train-classifier --real mnist_png --run runs/mnist --iteration 0 --instances 0,1 \\
      --n-fake 20000 --arch small_cnn --resolution 28 --channels 1 --out clf/it0"""

EVAL_EPILOG = FOLDERS + """
The images are read at the classifier's own resolution and channels (--no-resize: native pixels).

examples:
  gangaps evaluate-classifier clf/r18/classifier.safetensors --real test/0_real \\
      --fake test/1_fake --json clf/r18/test.json
  gangaps evaluate-classifier clf/r18/classifier.safetensors --real faces/real \\
      --fake stylegan=faces/stylegan --fake progan=faces/progan --no-resize --out eval/r18
  gangaps evaluate-classifier clf/r50/classifier.safetensors --sources cnndet_test/ \\
      --jpeg-quality 100,90,75,50 --blur-sigma 0,1,2 --out eval/robust"""


# --------------------------------------------------------------------------------- helpers


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None


def _source_channels(path: Path, resolution: int) -> int | None:
    """Channels of a prepared cache (None for a folder or zip: decoded to what is asked)."""
    cache = path if path.is_file() and path.suffix == ".safetensors" else path / cache_name(resolution)
    return read_cache_meta(cache)["channels"] if cache.is_file() else None


def _check_source(flag: str, path: str) -> Path:
    """The path, checked to exist and, for a folder, to hold at least one image (cheap: stops
    at the first), so that errors come before anything is written or decoded."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag}: not found: {p}")
    if p.is_dir() and not any(p.glob("images-*.safetensors")) and not any(
            f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() for f in p.rglob("*")):
        raise UserError(f"{flag}: no images found in {p} ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return p


def _load(flag: str, path: Path, resolution: int, channels: int, quiet: bool) -> torch.Tensor:
    """uint8 [N, C, R, R] with the flag named in any error."""
    if not quiet:  # decoding a big folder takes a while; say what is happening
        print(f"loading {flag.lstrip('-')} images from {path} ({resolution} px)", file=sys.stderr, flush=True)
    try:
        images = load_image_dataset(path, resolution, channels)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None
    if len(images) < 2:
        raise UserError(f"{flag}: {path} holds {len(images)} image(s); at least 2 are needed")
    return images


def _channels(args: argparse.Namespace, sources: dict[str, Path]) -> int:
    """--channels, else what the prepared caches hold (which must agree), else 3 (RGB)."""
    found = {flag: c for flag, p in sources.items()
             if (c := _source_channels(p, args.resolution)) is not None}
    if len(set(found.values())) > 1:
        desc = ", ".join(f"{flag} has {c}" for flag, c in found.items())
        raise UserError(f"mismatched channels: {desc}; prepare both with the same --channels")
    if args.channels is not None:
        for flag, c in found.items():
            if c != args.channels:
                raise UserError(f"mismatched channels: {flag} is a {c}-channel cache but "
                                f"--channels {args.channels}")
        return args.channels
    return next(iter(found.values()), 3)


def _options(items: list[str]) -> dict[str, Any]:
    """--option key=value pairs, values parsed as YAML (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {item!r} is not key=value (e.g. stem=no_downsample)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _pair(text: str, flag: str, cast: type) -> list:
    parts = text.split(",")
    try:
        vals = [cast(p) for p in parts]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected LOW,HIGH (e.g. 30,100)") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise UserError(f"{flag} {text!r}: expected LOW,HIGH (e.g. 30,100)")
    return vals


def _instances(text: str | None, iteration_dir: Path) -> list[int]:
    if text is None:  # every finished generator of that iteration
        found = sorted(int(p.name[4:]) for p in iteration_dir.glob("gen_*")
                       if (p / "DONE").exists() and p.name[4:].isdigit())
        if not found:
            raise UserError(f"--run: no finished generator (gen_NN/DONE) in {iteration_dir}")
        return found
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--instances {text!r}: expected comma-separated integers, e.g. 0,1") from None


def _generators(args: argparse.Namespace) -> list[Path]:
    """Checkpoints of the run's frozen generators named by --run/--iteration/--instances."""
    from gangaps.experiment.store import RunStore  # the experiment stack only when needed

    run = Path(args.run).expanduser()  # a run folder, not an image source: it need hold no image
    if not run.is_dir():
        raise UserError(f"--run: not a folder: {run}")
    if args.iteration is None:
        raise UserError("--run needs --iteration K (the iteration whose generators make the fakes)")
    shared = None
    if (run / "config.yaml").exists():
        shared = RunStore(run).load_config().experiment.reuse_iteration0
    store = RunStore(run, shared)
    idir = store.iteration_dir(args.iteration)
    if not idir.is_dir():
        raise UserError(f"--run: {run} has no iteration {args.iteration} ({idir} not found)")
    paths = []
    for n in _instances(args.instances, idir):
        ckpt = store.generator_dir(args.iteration, n) / "checkpoint.safetensors"
        if not ckpt.is_file():
            raise UserError(f"--run: generator {n} of iteration {args.iteration} has no checkpoint "
                            f"({ckpt})")
        if not (ckpt.parent / "DONE").exists():  # a checkpoint mid-training is not the generator
            raise UserError(f"--run: generator {n} of iteration {args.iteration} is not finished "
                            f"(no {ckpt.parent / 'DONE'})")
        paths.append(ckpt)
    return paths


# ------------------------------------------------------------------------ train-classifier


def _augment(args: argparse.Namespace) -> dict[str, Any]:
    aug: dict[str, Any] = {}
    if args.crop is not None:
        aug["crop"] = args.crop
    if args.pad:
        aug["pad"] = args.pad
    if args.flip:
        aug["flip"] = True
    if args.blur_prob > 0:
        aug.update(blur_prob=args.blur_prob, blur_sigma=_pair(args.blur_sigma, "--blur-sigma", float))
    if args.jpeg_prob > 0:
        aug.update(jpeg_prob=args.jpeg_prob, jpeg_quality=_pair(args.jpeg_quality, "--jpeg-quality", int))
    augment = DetectorAugment.from_config(aug)  # bad values fail now, before any image is decoded
    try:
        augment.check_size(args.resolution, args.resolution)
    except UserError as e:
        raise UserError(f"--crop/--pad at --resolution {args.resolution}: {e}") from None
    return aug


def _training_config(args: argparse.Namespace, n_real: int, n_fake: int,
                     augment: dict[str, Any], fakes: str = "bank") -> ClassifierTrainingConfig:
    flags = {"val_fraction": "--val-fraction", "batch_size": "--batch-size", "lr": "--lr",
             "epochs": "--epochs", "patience": "--patience", "min_lr": "--min-lr",
             "select": "--select", "weight_decay": "--weight-decay", "ema": "--ema"}
    try:
        return ClassifierTrainingConfig(n_real=n_real, n_fake=n_fake, augment=augment, fakes=fakes,
                                        **{k: getattr(args, k) for k in flags})
    except ValidationError as e:
        first = e.errors()[0]
        flag = flags.get(str(first["loc"][0]), str(first["loc"][0]))
        raise UserError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from None


def _check_settings(out: Path, settings: dict) -> None:
    """A training folder belongs to one set of settings; resuming with others is refused."""
    path = out / SETTINGS
    if not path.exists():
        return
    old = read_json(path)
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        k = diff[0]
        raise UserError(f"{out} was trained with other settings ({k}: {old.get(k)!r} -> "
                        f"{settings.get(k)!r}); use a new --out or delete it")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    """Train (or resume, or skip when finished) one detector; write it and its summary."""
    if (args.fake is None) == (args.run is None):
        raise UserError("give the fakes either as --fake DIR or as --run RUNDIR --iteration K")
    if args.run is None and (args.iteration is not None or args.instances is not None):
        raise UserError("--iteration/--instances go with --run")
    if args.run is None and args.fakes != "bank":
        raise UserError("--fakes on-the-fly draws from generators: it goes with --run")
    fakes = args.fakes.replace("-", "_")  # the config's spelling
    if args.arch not in ARCHITECTURES:
        raise UserError(f"unknown --arch {args.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    real_path = _check_source("--real", args.real)
    options = _options(args.option)
    device = _device(args.device)
    gens = _generators(args) if args.run is not None else []
    fake_path = _check_source("--fake", args.fake) if args.fake is not None else None
    if gens:
        # the generators fix the image format: sample one image to read it off
        from gangaps.generators import generate, load_generator
        probe = generate(load_generator(gens[0]), 1, 0)
        gen_c, gen_r = probe.shape[1], probe.shape[-1]
        if args.resolution is not None and args.resolution != gen_r:
            raise UserError(f"--resolution {args.resolution}, but the run's generators make {gen_r} px images")
        if args.channels is not None and args.channels != gen_c:
            raise UserError(f"mismatched channels: --channels {args.channels}, but the run's "
                            f"generators make {gen_c}-channel images")
        args.resolution = gen_r
        args.channels = _channels(argparse.Namespace(resolution=gen_r, channels=gen_c), {"--real": real_path})
    else:
        args.resolution = args.resolution or 64
        args.channels = _channels(args, {"--real": real_path, "--fake": fake_path})
    augment = _augment(args)
    build_classifier(args.arch, args.channels, args.resolution, **options)  # bad options fail early
    for flag, n in (("--n-real", args.n_real), ("--n-fake", args.n_fake)):
        if n is not None and n < 2:
            raise UserError(f"{flag} must be at least 2, got {n}")
    _training_config(args, 2, 2, augment)  # bad training values fail before any decoding
    out = Path(args.out).expanduser()
    settings = {
        "arch": args.arch, "options": options, "resolution": args.resolution, "channels": args.channels,
        "real": str(real_path.resolve()), "fake": str(fake_path.resolve()) if fake_path else None,
        "run": str(Path(args.run).resolve()) if args.run else None, "iteration": args.iteration,
        "generators": [str(p) for p in gens], "n_real": args.n_real, "n_fake": args.n_fake,
        **({"fakes": fakes} if fakes != "bank" else {}),  # folders trained before --fakes stay resumable
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
        "val_fraction": args.val_fraction, "patience": args.patience, "min_lr": args.min_lr,
        "select": args.select, "weight_decay": args.weight_decay, "ema": args.ema,
        "augment": augment, "seed": args.seed,
    }
    if (out / SUMMARY).exists() and (out / FINAL).exists():
        _check_settings(out, settings)
        print(f"{out}: already trained (summary.json); nothing to do", file=sys.stderr)
        return
    _check_settings(out, settings)

    real = _load("--real", real_path, args.resolution, args.channels, args.quiet)
    gen = torch.Generator().manual_seed(args.seed)
    if args.n_real is not None:
        if args.n_real > len(real):
            raise UserError(f"--n-real {args.n_real}, but --real holds {len(real)} images")
        real = real[torch.randperm(len(real), generator=gen)[:args.n_real]]
    stream = None
    if gens:
        n_fake = args.n_fake or len(real)  # balanced by default
        if not args.quiet:
            what = (f"{n_fake} fakes" if fakes == "bank" else  # generator_fakes owns the count
                    f"validation fakes ({args.val_fraction:g} of {n_fake}; training draws fresh ones)")
            print(f"sampling {what} from {len(gens)} generator(s)", file=sys.stderr, flush=True)
        fake, stream = generator_fakes(gens, n_fake, fakes, args.val_fraction, args.seed, device)
        fake = fake.cpu()
    else:
        fake = _load("--fake", fake_path, args.resolution, args.channels, args.quiet)
        if args.n_fake is not None:
            if args.n_fake > len(fake):
                raise UserError(f"--n-fake {args.n_fake}, but --fake holds {len(fake)} images")
            fake = fake[torch.randperm(len(fake), generator=gen)[:args.n_fake]]
        n_fake = len(fake)
    sides = {"--real": real}
    if stream is None:  # a stream draws its training fakes; only a bank must hold enough
        sides["--fake"] = fake
    for flag, imgs in sides.items():
        # fit_classifier draws batch_size/2 images per side per step from the training part
        n_train = len(imgs) - max(1, round(len(imgs) * args.val_fraction))
        if n_train < args.batch_size // 2:
            raise UserError(f"{flag}: {len(imgs)} images leave {n_train} for training after the "
                            f"validation split, fewer than half of --batch-size {args.batch_size}")
    # written only now, once every input is known to be usable: a refused first attempt must
    # not pin its settings on the folder
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SETTINGS).exists():
        atomic_write_json(out / SETTINGS, settings)
    tcfg = _training_config(args, len(real), n_fake, augment, fakes)
    torch.manual_seed(args.seed)  # initial weights from the seed alone
    model = build_classifier(args.arch, args.channels, args.resolution, **options)
    summary = fit_classifier(model, real, fake, tcfg, args.seed, out, device,
                             progress=not args.quiet, label=f"{args.arch} epochs", fake_stream=stream)
    save_classifier(out / FINAL, model, args.arch, options, args.channels, args.resolution, summary)
    atomic_write_json(out / SUMMARY, {**summary, "settings": settings})
    print(f"{out / FINAL}: best epoch {summary['best_epoch']} of {summary['epochs']}, "
          f"validation accuracy {summary['val_accuracy']:.3f}, AP {summary['val_ap']:.3f}")


# --------------------------------------------------------------------- evaluate-classifier


def evaluate(classifier: str | Path, real: str | Path, fake: str | Path, bootstrap: int = 1000,
             device: str = "auto", seed: int = 0, quiet: bool = True,
             flip_tta: bool = False, resize: bool = True, fit: str = "crop") -> dict[str, Any]:
    """Metrics (and bootstrap 95 % CIs) of a saved classifier on one real and one fake source
    (the single-source `--json` layout); many sources: `gangaps.detector_eval.evaluate_sources`.

    flip_tta scores each image by the mean logit of it and its mirror image.
    """
    from gangaps.detector_eval import Source, evaluate_sources, single_source_record
    src = Source(Path(fake).name, fake=_check_source("--fake", str(fake)))
    return single_source_record(evaluate_sources(classifier, real, [src], resize=resize, fit=fit,
                                                 bootstrap=bootstrap, device=device, seed=seed,
                                                 quiet=quiet, flip_tta=flip_tta))


def _floats(text: str | None, flag: str, cast: type) -> list:
    if not text:
        return []
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 100,90,75") from None


def cmd_evaluate_classifier(args: argparse.Namespace) -> None:
    from gangaps import detector_eval as de
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.run is None and (args.iteration is not None or args.instances is not None):
        raise UserError("--iteration/--instances go with --run")
    perturbations = de.sweep(_floats(args.jpeg_quality, "--jpeg-quality", int),
                             _floats(args.blur_sigma, "--blur-sigma", float))
    sources = de.fake_sources(args.fake)
    if args.sources:
        sources += de.folder_sources(args.sources)
    if args.run is not None:
        gens = []
        for k in _floats(args.iteration, "--iteration", int) or [None]:
            gens += _generators(argparse.Namespace(run=args.run, iteration=k, instances=args.instances))
        sources += de.generator_sources(gens)
    if args.n_fake is not None and args.n_fake < 2:
        raise UserError(f"--n-fake must be at least 2, got {args.n_fake}")
    r = de.evaluate_sources(args.classifier, args.real, sources, perturbations, resize=not args.no_resize,
                            fit=args.fit, bootstrap=args.bootstrap, device=args.device, seed=args.seed,
                            quiet=args.quiet, flip_tta=args.flip_tta, n_fake=args.n_fake)
    # one unnamed --fake and no sweep: the single-source report and --json layout, as before
    single = (len(args.fake) == 1 and "=" not in args.fake[0] and not args.sources and args.run is None
              and len(perturbations) == 1)
    print(de.format_report(r) if single else de.markdown_table(r))
    if args.json:
        atomic_write_json(Path(args.json).expanduser(), de.single_source_record(r) if single else r)
    if args.out:
        for path in de.write_outputs(r, Path(args.out).expanduser()):
            print(f"wrote {path}", file=sys.stderr)


# ------------------------------------------------------------------------------- argparse


def add_detector_commands(sub: argparse._SubParsersAction) -> None:
    """Register `train-classifier` and `evaluate-classifier` on the `gangaps` subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "train-classifier", formatter_class=fmt, epilog=TRAIN_EPILOG,
        help="train a real-vs-fake detector on two image folders (or a run's generators)",
        description="Train a GAN-classifier (detector) on real vs fake images: balanced batches,\n"
                    "a validation split, early stopping with lr/10 drops (CNNDetection), best\n"
                    "epoch kept. Re-running the same command resumes.")
    g = p.add_argument_group("data")
    g.add_argument("--real", required=True, metavar="SRC", help="real images (folder, zip or cache)")
    g.add_argument("--fake", metavar="SRC", help="fake images (folder, zip or cache); or use --run")
    g.add_argument("--run", metavar="RUNDIR", help="draw the fakes from this gangaps run's frozen generators")
    g.add_argument("--iteration", type=int, metavar="K",
                   help="with --run: the iteration whose generators make the fakes")
    g.add_argument("--instances", metavar="I,J", help="with --run: generator instances (default: all finished)")
    g.add_argument("--n-real", type=int, metavar="N", help="use N randomly chosen real images (default: all)")
    g.add_argument("--n-fake", type=int, metavar="N",
                   help="fakes to use: with --run, samples split evenly over the generators "
                        "(default: as many as real); with --fake, a random subset (default: all)")
    g.add_argument("--fakes", choices=["bank", "on-the-fly"], default="bank",
                   help="with --run: 'bank' samples the --n-fake fakes once; 'on-the-fly' draws fresh "
                        "fakes for every training batch and keeps --n-fake × --val-fraction to validate "
                        "(default bank)")
    g.add_argument("--resolution", type=int, metavar="PX",
                   help="image side the classifier is built for (default 64; with --run: the generators')")
    g.add_argument("--channels", type=int, choices=[1, 3],
                   help="1 (gray) or 3 (RGB); default: the caches' channels, else 3")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet18", help=f"architecture: {', '.join(sorted(ARCHITECTURES))} "
                   "(default resnet18, from scratch)")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture option, repeatable (e.g. stem=no_downsample, weights_path=r18.pth, "
                        "width=32)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=20, help="maximum epochs (default 20)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam(W) learning rate (default 1e-3)")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per step, half real half fake (default 64)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each side held out for validation (default 0.1)")
    g.add_argument("--patience", type=int, default=2,
                   help="epochs without validation gain before lr/10 (default 2)")
    g.add_argument("--min-lr", type=float, default=1e-6, help="stop once lr falls below (default 1e-6)")
    g.add_argument("--select", choices=["accuracy", "ap", "loss"], default="accuracy",
                   help="validation measure for lr drops, stopping and the kept epoch: balanced accuracy "
                        "at logit 0 (CNNDetection, default), average precision, or loss")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay (default 0)")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and keep an exponential moving average of the weights, with this "
                        "per-step decay, e.g. 0.999 (default 0: off)")
    g.add_argument("--seed", type=int, default=0, help="split, sampling, init and augmentation seed")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g = p.add_argument_group("augmentation (CNNDetection: blur -> JPEG -> crop -> flip, per image)")
    g.add_argument("--crop", type=int, metavar="PX", help="random PX×PX crop (evaluation sees full images)")
    g.add_argument("--pad", type=int, default=0, metavar="PX",
                   help="reflect-pad PX on every side before the random crop: --crop = --resolution "
                        "with --pad 4 shifts images by up to 4 px at full size (default 0)")
    g.add_argument("--flip", action="store_true", help="random horizontal flip")
    g.add_argument("--blur-prob", type=float, default=0.0, help="probability of Gaussian blur (default 0)")
    g.add_argument("--blur-sigma", default="0,3", metavar="LO,HI", help="blur σ range in px (default 0,3)")
    g.add_argument("--jpeg-prob", type=float, default=0.0,
                   help="probability of JPEG re-compression (default 0)")
    g.add_argument("--jpeg-quality", default="30,100", metavar="LO,HI",
                   help="JPEG quality range (default 30,100)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser(
        "evaluate-classifier", formatter_class=fmt, epilog=EVAL_EPILOG,
        help="accuracy, best-threshold accuracy, recalls, AP, AUC (95%% CIs) of a detector on many "
             "fake sources, resized or at native pixels, optionally under JPEG/blur",
        description="Score a trained classifier on real vs fake images, one row per fake source\n"
                    "(and perturbation): balanced accuracy at logit 0, best-threshold balanced\n"
                    "accuracy, real and fake recall, average precision and ROC-AUC (fake =\n"
                    "positive), each with its n and a percentile-bootstrap 95% interval.")
    p.add_argument("classifier", help="classifier.safetensors written by train-classifier or a run")
    p.add_argument("--real", metavar="SRC", help="real images (folder, zip or cache); optional when "
                   "every --sources subfolder has its own 0_real")
    p.add_argument("--fake", action="append", default=[], metavar="[NAME=]SRC",
                   help="fake images (folder, zip or cache), repeatable; NAME labels the row "
                        "(default: the folder's name)")
    p.add_argument("--sources", metavar="DIR", help="a folder of folders, one fake source each: "
                   "NAME/ of fakes, or CNNDetection's NAME/0_real + NAME/1_fake")
    p.add_argument("--run", metavar="RUNDIR", help="also score this run's finished generators, one row each")
    p.add_argument("--iteration", metavar="K[,K]", help="with --run: the iteration(s)")
    p.add_argument("--instances", metavar="I,J", help="with --run: generator instances (default: all finished)")
    p.add_argument("--n-fake", type=int, metavar="N",
                   help="with --run: samples per generator (default: as many as real images)")
    p.add_argument("--no-resize", action="store_true",
                   help="native pixels (centre-cropped to square, never resampled), as CNNDetection's "
                        "no_resize; a network with a fixed input size gets --fit")
    p.add_argument("--fit", choices=list(FITS), default="crop",
                   help="with --no-resize, for networks that need a fixed input (flatten/dense heads): "
                        "centre crop, or mean logit of tiles covering the image (default crop)")
    p.add_argument("--jpeg-quality", metavar="Q,Q", help="robustness sweep: also score every source "
                   "after JPEG at each quality, e.g. 100,90,75,50")
    p.add_argument("--blur-sigma", metavar="S,S", help="robustness sweep: also after Gaussian blur of "
                   "each σ px, e.g. 0,1,2 (one factor at a time, on native pixels, both sides)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0: none)")
    p.add_argument("--out", metavar="DIR", help="write eval.csv, eval.md, eval.json (and robustness.png "
                   "for a sweep) here")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON here")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed; also the sample seed of --run "
                   "generators (as `gangaps generate --seed`)")
    p.add_argument("--flip-tta", action="store_true",
                   help="score each image by the mean logit of it and its horizontal mirror "
                        "(for detectors trained with --flip)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate_classifier)
