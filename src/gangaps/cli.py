"""`gangaps`: one command, one subcommand per task. Bad input: one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from gangaps.errors import UserError

EPILOG = "Config overrides are dotted key=value pairs, e.g. gan.lr=2e-4 experiment.fool_mode=memoryless"


def _config(path: str | None, overrides: list[str], data_root: str | None):
    from gangaps.config import load_config
    if data_root:
        overrides = [f"data.path={data_root}", *overrides]
    return load_config(path, overrides)


def cmd_run(args: argparse.Namespace) -> None:
    from gangaps.experiment.runner import Runner
    cfg = _config(args.config, args.overrides, args.data_root)
    out = Path(args.out or Path("runs") / cfg.name)
    if args.dry_run:
        from gangaps.config import to_yaml
        print(to_yaml(cfg), end="")
        return
    Runner(cfg, out, progress=not args.quiet, executor=args.executor, address=args.address).run()
    from gangaps.train.distributed import rank
    if rank() == 0:  # under torchrun every rank runs this command
        print(f"report: {out / 'report' / 'index.html'}")


def cmd_demo(args: argparse.Namespace) -> None:
    demo = resources.files("gangaps") / "configs" / "demo.yaml"
    with resources.as_file(demo) as path:
        args.config = str(path)
        args.out = args.out or "runs/demo"
        cmd_run(args)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_sweep(args: argparse.Namespace) -> None:
    from gangaps.experiment.sweep import run_sweep
    cfg = _config(args.config, args.overrides, args.data_root)
    lambdas = _floats(args.fool_lambda) if args.fool_lambda else [cfg.experiment.fool_lambda]
    modes = args.fool_mode.split(",") if args.fool_mode else [cfg.experiment.fool_mode]
    archs = args.target_arch.split(",") if args.target_arch else [None]
    out = Path(args.out or Path("runs") / f"{cfg.name}-sweep")
    report = run_sweep(cfg, out, lambdas, modes, archs, progress=not args.quiet,
                       executor=args.executor, address=args.address)
    print(f"report: {report}")


def cmd_status(args: argparse.Namespace) -> None:
    from gangaps.experiment.status import status_text
    print(status_text(Path(args.run_dir)))


def cmd_verify(args: argparse.Namespace) -> int:
    from gangaps.experiment.verify import verify_text
    text, ok = verify_text(Path(args.run_dir))
    print(text)
    return 0 if ok else 1


def cmd_report(args: argparse.Namespace) -> None:
    from gangaps.report import build_report
    print(f"report: {build_report(Path(args.run_dir))}")


def _generator_checkpoint(source: Path, iteration: int | None, instance: int | None) -> Path:
    """A checkpoint file as given, or the finished generator (iteration, instance) of a run."""
    if source.is_file():
        if iteration is not None or instance is not None:
            raise UserError(f"{source} is a checkpoint file: drop --iteration and --instance")
        return source
    from gangaps.experiment.store import RunStore
    from gangaps.train.gan import CHECKPOINT
    if not (source / "config.yaml").is_file():
        raise UserError(f"{source}: neither a generator checkpoint nor a run directory")
    if iteration is None or instance is None:
        raise UserError("a run directory needs --iteration K and --instance I")
    cfg = RunStore(source).load_config()
    e = cfg.experiment
    if not (0 <= iteration < e.iterations and 0 <= instance < e.instances):
        raise UserError(f"{source} has iterations 0..{e.iterations - 1} and instances "
                        f"0..{e.instances - 1}; got --iteration {iteration} --instance {instance}")
    store = RunStore(source, e.reuse_iteration0)
    job = store.generator_dir(iteration, instance)
    if not store.is_done(job):
        raise UserError(f"{job} is not finished yet (run the experiment to the end of it)")
    return job / CHECKPOINT


def cmd_generate(args: argparse.Namespace) -> None:
    from gangaps.experiment.runner import resolve_device
    from gangaps.generators import export_samples, load_generator
    if args.n < 1 or args.batch_size < 1:
        raise UserError(f"--n and --batch-size must be ≥ 1, got {args.n} and {args.batch_size}")
    ckpt = _generator_checkpoint(Path(args.source), args.iteration, args.instance)
    out = Path(args.out)
    if out.exists() and (out.suffix == ".npz") == out.is_dir():
        raise UserError(f"--out {out}: exists and is a {'folder' if out.is_dir() else 'file'}")
    device = resolve_device(args.device)
    G = load_generator(ckpt, device)
    g_kwargs = {k: v for k, v in (("noise_mode", args.noise_mode),
                                  ("truncation_psi", args.truncation_psi)) if v is not None}
    if g_kwargs and not hasattr(G, "mapping"):
        raise UserError("--noise-mode and --truncation-psi are for StyleGAN2 generators")
    z = None
    if args.latents:
        from gangaps.generators import load_latents
        z = load_latents(args.latents, args.n, G.z_dim)
    export_samples(G, args.n, args.seed, out, args.batch_size, device, not args.quiet, z,
                   **g_kwargs)
    what = f"latents {args.latents}" if z is not None else f"seed {args.seed}"
    print(f"wrote {args.n} samples of {ckpt} ({what}) to {out}")


def cmd_convert_nvidia(args: argparse.Namespace) -> None:
    from gangaps.models.stylegan2_import import convert_nvidia_files
    convert_nvidia_files(args.g_state_dict, args.d_state_dict, args.config_json, args.out)
    print(f"wrote {args.out}")


def cmd_export_nvidia(args: argparse.Namespace) -> None:
    from gangaps.generators import load_generator_state
    from gangaps.models.stylegan2_import import export_nvidia
    ckpt = _generator_checkpoint(Path(args.source), args.iteration, args.instance)
    files = export_nvidia(load_generator_state(ckpt), args.out)
    print(f"wrote {', '.join(str(f) for f in files)}")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from gangaps.data.images import prepare_data
    summary = prepare_data(args.src, args.dst, args.resolution, center_crop=not args.no_crop,
                           resize_filter=args.filter, channels=args.channels,
                           progress=not args.quiet)
    print(", ".join(f"{k}: {v}" for k, v in summary.items() if not isinstance(v, (list, dict))))


def _add_run_args(p: argparse.ArgumentParser, with_config: bool) -> None:
    if with_config:
        p.add_argument("config", help="YAML config (e.g. configs/mnist-dcgan.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--out", help="run directory (default runs/<name>); re-running resumes it")
    p.add_argument("--data-root", help="folder with the data (MNIST idx files); also "
                   "$GANGAPS_DATA_ROOT")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: every job in this process, one after another (default); ray: "
                   "each job on a Ray cluster as soon as what it waits for is done (not part "
                   "of the run: a run started on one resumes on the other)")
    p.add_argument("--address", help="with --executor ray: the cluster (auto, or HOST:PORT of "
                   "`ray start --head`); default: a cluster of this machine alone")


def build_parser() -> argparse.ArgumentParser:
    from gangaps import __version__
    parser = argparse.ArgumentParser(
        prog="gangaps", epilog=EPILOG,
        description="Sequential training of GANs against GAN-classifiers (Pathak & Dufour, "
                    "CVPR 2023): train generators, train classifiers on a subset of them, train "
                    "the next generators to fool those classifiers, measure, repeat.")
    parser.add_argument("--version", action="version", version=f"gangaps {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run (or resume) an experiment from a config", epilog=EPILOG)
    _add_run_args(p, with_config=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="a complete small experiment on MNIST (minutes on a CPU)",
                       epilog=EPILOG)
    _add_run_args(p, with_config=False)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="runs differing after iteration 0 (λ, fool_mode, fooled "
                       "architecture) sharing one iteration 0, with a combined report", epilog=EPILOG)
    _add_run_args(p, with_config=True)
    p.add_argument("--fool-lambda", help="comma-separated λ values, e.g. 0.1,0.3,1,3,10 (R1)")
    p.add_argument("--fool-mode", help="comma-separated: fool-all,memoryless,none (R3)")
    p.add_argument("--target-arch", help="comma-separated architectures to fool in turn; needs a "
                   "target and a held-out classifier of each in the config (R4)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="what is done, running and left in a run directory",
                       description="Per iteration, every generator and classifier job of a run: "
                       "done (with its time), running (on which host, pid), interrupted (resumes "
                       "from its checkpoint when the same run command is given again) or pending.")
    p.add_argument("run_dir", help="a run directory (holds config.yaml)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", help="check every file of a run against its checksum",
                       description="Check every checkpoint, classifier, sample grid, DONE marker, "
                       "evaluation and report file of a run (safetensors files against the "
                       "SHA-256 in their header) and print what is damaged and how to redo it. "
                       "Exit status 0 when all is intact, 1 otherwise.")
    p.add_argument("run_dir", help="a run directory (holds config.yaml)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="(re)build report/index.html and results.json of a run",
                       description="Collect every finished measurement of a run into "
                       "report/results.json (long format) and draw report/index.html with its "
                       "figures; works on a run that is still going.")
    p.add_argument("run_dir", help="a run directory (holds config.yaml)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="write samples of a generator as PNGs or one .npz",
                       description="N seeded, reproducible samples of a finished generator of a "
                       "run (or of a checkpoint file), for clean-fid, torch-fidelity, pytorch-fid "
                       "or other detectors. --out DIR: 000000.png, ...; --out FILE.npz: one uint8 "
                       "array [N, H, W, C] named arr_0.")
    p.add_argument("source", help="a run directory, or a generator checkpoint.safetensors")
    p.add_argument("--iteration", type=int, help="with a run directory: the iteration K")
    p.add_argument("--instance", type=int, help="with a run directory: the instance I")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="folder for PNGs, or FILE.npz")
    p.add_argument("--seed", type=int, default=0, help="latent seed (same seed, same images)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--latents", help="the first N latents of FILE.npy or FILE.pt [N, z_dim] "
                   "instead of drawing them from --seed")
    p.add_argument("--noise-mode", choices=["random", "const", "none"],
                   help="StyleGAN2: noise inputs (default random, seeded; const: the stored "
                   "noise buffers, as NVIDIA's generate.py)")
    p.add_argument("--truncation-psi", type=float, help="StyleGAN2: truncation (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("prepare-data", help="turn a folder or zip of images into a training cache")
    p.add_argument("src", help="folder (searched recursively) or .zip of images")
    p.add_argument("dst", help="cache file to write")
    p.add_argument("--resolution", type=int, required=True, help="output side in pixels")
    p.add_argument("--filter", default="lanczos", choices=["lanczos", "box", "bicubic", "bilinear"],
                   help="resize filter (box reproduces NVIDIA's FFHQ-256 FIDs)")
    p.add_argument("--no-crop", action="store_true", help="resize without a center crop")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("convert-nvidia", help="NVIDIA stylegan2-ada-pytorch state dicts -> "
                       "gangaps checkpoint (see docs/stylegan2.md)")
    p.add_argument("g_state_dict")
    p.add_argument("d_state_dict")
    p.add_argument("config_json", help="JSON with z_dim, w_dim, img_resolution, ...")
    p.add_argument("out")
    p.set_defaults(func=cmd_convert_nvidia)

    p = sub.add_parser("export-nvidia", help="a gangaps StyleGAN2 generator -> NVIDIA "
                       "stylegan2-ada-pytorch state dicts (see docs/stylegan2.md)",
                       description="Write OUT/G_state_dict.pt (G_ema), OUT/D_state_dict.pt and "
                       "OUT/config.json in NVIDIA's layout, for their generate.py, calc_metrics.py "
                       "and projector; convert-nvidia reads the same three files back.")
    p.add_argument("source", help="a run directory, or a generator checkpoint (ours or converted)")
    p.add_argument("out", help="folder for the three files")
    p.add_argument("--iteration", type=int, help="with a run directory: the iteration K")
    p.add_argument("--instance", type=int, help="with a run directory: the instance I")
    p.set_defaults(func=cmd_export_nvidia)

    from gangaps.detector_cli import add_detector_commands
    add_detector_commands(sub)
    from gangaps.metrics_cli import add_metrics_command
    add_metrics_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options too (`run cfg.yaml --out d gan.lr=1e-3`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "data_root", None):
        os.environ.setdefault("GANGAPS_DATA_ROOT", args.data_root)
    try:
        rc = args.func(args)
    except UserError as e:  # str(e) is one line (gangaps.errors)
        print(f"gangaps: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gangaps: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gangaps status RUN | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
