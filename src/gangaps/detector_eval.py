"""`evaluate-classifier`'s engine: one detector against many fake sources, as the field reports it.

CNNDetection's `eval.py` loops over many generators' folders (at native resolution with
`no_resize`) and UnivFD's `validate.py` adds JPEG / blur perturbations and best-threshold
accuracy. Here one call scores a saved classifier on every (source, perturbation) pair and
returns one row per pair: accuracy at logit 0, best-threshold ("oracle") balanced accuracy,
real and fake recall, AP and AUC (fake = positive), each with its n and a bootstrap interval.

Pixels. By default every image is centre-cropped to square and resized (Lanczos) to the
classifier's resolution, as `train-classifier` reads its data. `resize=False` keeps the native
pixels (centre-cropped to square, never resampled): a network with a global pool sees them
whole, skipping its own resize; a network that needs a fixed input (a flatten + dense head) gets
its input_size from a centre crop (`fit="crop"`) or the mean logit of tiles covering the image
(`fit="tile"`). Every row says which.

Perturbations act on the native pixels of both sides (as on the files), before any resize:
Gaussian blur then JPEG, through `gangaps.data.augment` (the training augmentation's code) with
a seeded generator; at one fixed σ or quality nothing in them is random.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gangaps.data.augment import DetectorAugment, center_crop
from gangaps.data.images import load_native_images, resize_images
from gangaps.detector_cli import FITS, _check_source, _device, _load, _source_channels
from gangaps.errors import UserError
from gangaps.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from gangaps.metrics.detection import METRICS, ORACLE, bootstrap_ci, detection_metrics, oracle_accuracy
from gangaps.train.classifier import classify

ROW_METRICS = ("accuracy", ORACLE, "real_recall", "fake_recall", "ap", "auc")
CSV_NAME, TABLE_NAME, JSON_NAME, FIGURE_NAME = "eval.csv", "eval.md", "eval.json", "robustness.png"
_NATIVE_BATCH = 32  # native images can be large (256 px and more into a ResNet-50)


@dataclass(frozen=True)
class Source:
    """One fake source: a folder/zip/cache of fakes, or a generator checkpoint to sample; with its
    own real side (CNNDetection's DIR/0_real, DIR/1_fake) or, when None, the shared one."""

    name: str
    fake: Path | None = None
    generator: Path | None = None
    real: Path | None = None


@dataclass(frozen=True)
class Perturbation:
    """Gaussian blur of σ px (0: none), then JPEG at a quality (None: none), on native pixels."""

    blur_sigma: float = 0.0
    jpeg_quality: int | None = None

    @property
    def label(self) -> str:
        parts = ([f"blur σ={self.blur_sigma:g}"] if self.blur_sigma else []) + (
            [f"JPEG q={self.jpeg_quality}"] if self.jpeg_quality is not None else [])
        return ", ".join(parts) or "none"

    @property
    def clean(self) -> bool:
        return self.blur_sigma == 0 and self.jpeg_quality is None

    def apply(self, images: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
        if self.clean:
            return images
        aug = DetectorAugment(blur_prob=1.0 if self.blur_sigma else 0.0,
                              blur_sigma=(self.blur_sigma, self.blur_sigma),
                              jpeg_prob=1.0 if self.jpeg_quality is not None else 0.0,
                              jpeg_quality=(self.jpeg_quality or 100,) * 2)
        gen = torch.Generator().manual_seed(seed)
        return [aug(img[None], gen)[0] for img in images]  # per image: sides may differ


def sweep(jpeg_qualities: Sequence[int] = (), blur_sigmas: Sequence[float] = ()) -> list[Perturbation]:
    """One factor at a time, as UnivFD sweeps them: unperturbed, each JPEG quality, each σ > 0."""
    for q in jpeg_qualities:
        if not 1 <= q <= 100:
            raise UserError(f"--jpeg-quality {q}: a JPEG quality is 1..100")
    for s in blur_sigmas:
        if not 0 <= s <= 50:
            raise UserError(f"--blur-sigma {s:g}: σ must be in [0, 50] px")
    return [Perturbation(), *(Perturbation(jpeg_quality=q) for q in dict.fromkeys(jpeg_qualities)),
            *(Perturbation(blur_sigma=s) for s in dict.fromkeys(blur_sigmas) if s > 0)]


# ------------------------------------------------------------------------------- sources


def fake_sources(items: Sequence[str]) -> list[Source]:
    """`--fake SRC` or `--fake NAME=SRC`, repeatable; a bare SRC is named after its folder."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or "/" in name or not name.strip():  # a path that holds '=' is a path
            name, path = Path(item).expanduser().name or item, item
        out.append(Source(name.strip(), fake=_check_source(f"--fake {name.strip()}", path)))
    return out


def folder_sources(root: str | Path) -> list[Source]:
    """Each subfolder of `root` is one source: CNNDetection's NAME/0_real + NAME/1_fake (its own
    real side), or else a folder of fakes (scored against the shared --real)."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise UserError(f"--sources: not a folder: {r}")
    out = []
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / "0_real").is_dir() and (d / "1_fake").is_dir():
            out.append(Source(d.name, fake=_check_source(f"--sources {d.name}/1_fake", str(d / "1_fake")),
                              real=_check_source(f"--sources {d.name}/0_real", str(d / "0_real"))))
        else:
            out.append(Source(d.name, fake=_check_source(f"--sources {d.name}", str(d))))
    if not out:
        raise UserError(f"--sources: {r} holds no subfolders (one per fake source)")
    return out


def generator_sources(checkpoints: Sequence[Path]) -> list[Source]:
    """A run's generators (iter_KK/gen_NN/checkpoint.safetensors), named iter_KK/gen_NN."""
    return [Source(f"{p.parent.parent.name}/{p.parent.name}", generator=p) for p in checkpoints]


# ------------------------------------------------------------------------------- scoring


def _tiles(side: int, size: int) -> list[int]:
    """Offsets of the fewest size-px tiles covering side px, spread evenly (they overlap when
    size does not divide side)."""
    n = math.ceil(side / size)
    return [0] if n == 1 else [round(i * (side - size) / (n - 1)) for i in range(n)]


def pixels_label(resize: bool, resolution: int, sides: Sequence[int], fixed: int | None, fit: str) -> str:
    """What the network saw, for the table: e.g. 'resized to 64 px', 'native 256 px'."""
    if resize:
        return f"resized to {resolution} px"
    lo, hi = min(sides), max(sides)
    native = f"native {lo} px" if lo == hi else f"native {lo}-{hi} px"
    if fixed is None or (lo == hi == fixed):
        return native
    if fit == "crop":
        return f"{native}, centre {fixed} px crop"
    n = len(_tiles(hi, fixed)) ** 2
    return f"{native}, mean of {n} {fixed} px tiles" if lo == hi else f"{native}, mean of {fixed} px tiles"


def score(model: torch.nn.Module, images: torch.Tensor | list[torch.Tensor], device: torch.device,
          resize: bool = True, fit: str = "crop", flip_tta: bool = False) -> torch.Tensor:
    """Logits of one side: a uint8 batch at the classifier's resolution (resize), or a list of
    native-pixel images, grouped by size, fed whole, cropped or tiled (see the module doc)."""
    if resize:
        return classify(model, images, device, batch_size=500, flip_tta=flip_tta)
    fixed = model.input_size if getattr(model, "fixed_input", False) else None
    out = torch.empty(len(images))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    for shape, idx in groups.items():
        x = torch.stack([images[i] for i in idx])
        side = shape[-1]
        if fixed is None:
            views = [x]
        elif side < fixed:
            raise UserError(f"--no-resize: {side} px images are smaller than the {fixed} px input "
                            "this classifier's head needs; evaluate them resized")
        elif fit == "crop":
            views = [center_crop(x, fixed)]
        else:
            offs = _tiles(side, fixed)
            views = [x[..., t:t + fixed, left:left + fixed] for t in offs for left in offs]
        logits = sum(classify(model, v.contiguous(), device, _NATIVE_BATCH, flip_tta, resize=False)
                     for v in views) / len(views)
        out[torch.tensor(idx)] = logits
    return out


def row_metrics(real_logits: torch.Tensor, fake_logits: torch.Tensor, bootstrap: int,
                seed: int) -> dict[str, Any]:
    """Every ROW_METRICS value, and with bootstrap > 0 its percentile 95 % interval."""
    m: dict[str, Any] = {**detection_metrics(real_logits, fake_logits),
                         ORACLE: oracle_accuracy(real_logits, fake_logits)}
    ci = {k: list(bootstrap_ci(real_logits, fake_logits, k, bootstrap, seed=seed))
          for k in ROW_METRICS} if bootstrap else {}
    return {**{k: m[k] for k in ROW_METRICS}, "ci95": ci}


class _Sides:
    """Images of the sides, read once per command (native pixels kept for the perturbations)."""

    def __init__(self, resolution: int, channels: int, resize: bool, quiet: bool, seed: int,
                 device: torch.device) -> None:
        self.res, self.ch, self.resize, self.quiet, self.seed, self.dev = (
            resolution, channels, resize, quiet, seed, device)

    def _check_channels(self, flag: str, path: Path) -> None:
        c = _source_channels(path, self.res)
        if c is not None and c != self.ch:
            raise UserError(f"mismatched channels: {flag} is a {c}-channel cache, the classifier "
                            f"takes {self.ch}")

    def read(self, flag: str, path: Path) -> list[torch.Tensor]:
        self._check_channels(flag, path)
        if not self.quiet:
            print(f"loading {flag.lstrip('-')} images from {path} (native pixels)", file=sys.stderr, flush=True)
        try:
            images = load_native_images(path, self.ch)
        except UserError as e:
            raise UserError(f"{flag}: {e}") from None
        if len(images) < 2:
            raise UserError(f"{flag}: {path} holds {len(images)} image(s); at least 2 are needed")
        return images

    def sample(self, ckpt: Path, n: int) -> list[torch.Tensor]:
        from gangaps.generators import generate, load_generator
        images = generate(load_generator(ckpt, self.dev), n, self.seed, device=self.dev).cpu()
        if images.shape[1] != self.ch:
            raise UserError(f"mismatched channels: {ckpt} makes {images.shape[1]}-channel images, "
                            f"the classifier takes {self.ch}")
        return list(images)

    def view(self, flag: str, path: Path | None, native: list[torch.Tensor] | None,
             p: Perturbation) -> torch.Tensor | list[torch.Tensor]:
        """What the classifier is given: the resized batch, or the native list."""
        if self.resize and p.clean and path is not None:  # exactly the old single-source path
            self._check_channels(flag, path)
            return _load(flag, path, self.res, self.ch, self.quiet)
        images = p.apply(native, self.seed)
        return resize_images(images, self.res, self.ch) if self.resize else images


def evaluate_sources(classifier: str | Path, real: str | Path | None, sources: Sequence[Source],
                     perturbations: Sequence[Perturbation] = (Perturbation(),), resize: bool = True,
                     fit: str = "crop", bootstrap: int = 1000, device: str = "auto", seed: int = 0,
                     quiet: bool = True, flip_tta: bool = False, n_fake: int | None = None) -> dict[str, Any]:
    """One row per (source, perturbation) of a saved classifier; see the module doc.

    n_fake: samples per generator source (default: as many as that source's real images);
    generator samples use `seed`, as `gangaps generate --seed` does. Bootstrap seed: `seed`."""
    from gangaps.io import load_state
    from gangaps.train.classifier import load_classifier

    if fit not in FITS:
        raise UserError(f"--fit {fit!r}: one of {', '.join(FITS)}")
    if not sources:
        raise UserError("no fake source: give --fake, --sources or --run")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"fake source names repeat: {', '.join(dup)} (name them: --fake NAME=DIR)")
    clf = _check_source("classifier", str(classifier))
    if not clf.is_file():
        raise UserError(f"classifier: {clf} is not a file (expected classifier.safetensors)")
    try:
        spec = load_state(clf)["spec"]
    except Exception:  # not safetensors, or not one written by save_classifier
        raise UserError(f"classifier: {clf} is not a classifier written by gangaps") from None
    shared = _check_source("--real", str(real)) if real is not None else None
    if shared is None and any(s.real is None for s in sources):
        raise UserError("--real is needed for sources without their own 0_real folder")
    dev = _device(device)
    model = load_classifier(clf, dev)
    res, ch = spec["resolution"], spec["in_channels"]
    fixed = model.input_size if getattr(model, "fixed_input", False) else None
    sides = _Sides(res, ch, resize, quiet, seed, dev)
    for s in sources:  # every cheap check before the first image is decoded
        for flag, path in (("--real", s.real or shared), (f"--fake {s.name}", s.fake)):
            if path is not None:
                sides._check_channels(flag, path)
    native_real: dict[Path, list[torch.Tensor]] = {}
    real_logits: dict[tuple[Path, Perturbation], tuple[torch.Tensor, list[int]]] = {}
    rows = []
    for s in sources:
        rpath = s.real or shared
        need_native = not resize or any(not p.clean for p in perturbations)
        if rpath not in native_real and (need_native or s.generator is not None):
            native_real[rpath] = sides.read("--real", rpath)
        if s.generator is not None:
            fake_native = sides.sample(s.generator, n_fake or len(native_real[rpath]))
        else:
            fake_native = sides.read(f"--fake {s.name}", s.fake) if need_native else None
        for p in perturbations:
            if (rpath, p) not in real_logits:
                rv = sides.view("--real", rpath, native_real.get(rpath), p)
                real_logits[rpath, p] = (score(model, rv, dev, resize, fit, flip_tta),
                                         [x.shape[-1] for x in rv])
            fv = sides.view(f"--fake {s.name}", s.fake, fake_native, p)
            fl = score(model, fv, dev, resize, fit, flip_tta)
            rl, rsides = real_logits[rpath, p]
            rows.append({
                "source": s.name, "perturbation": p.label, "blur_sigma": p.blur_sigma,
                "jpeg_quality": p.jpeg_quality,
                "pixels": pixels_label(resize, res, rsides + [x.shape[-1] for x in fv], fixed, fit),
                "real": str(rpath), "fake": str(s.fake or s.generator), "n_real": len(rl),
                "n_fake": len(fl), **row_metrics(rl, fl, bootstrap, seed)})
    return {"classifier": str(clf), "arch": spec["arch"], "options": spec["options"], "resolution": res,
            "channels": ch, "resize": resize, "fit": fit if not resize and fixed else None,
            "flip_tta": flip_tta, "bootstrap": bootstrap, "seed": seed, "rows": rows}


# ------------------------------------------------------------------------------- outputs


def format_report(r: dict[str, Any]) -> str:
    """The single-source printout (the old `evaluate-classifier` report) of a one-row result."""
    row = r["rows"][0]
    tta = ", logits averaged with the mirror image's" if r.get("flip_tta") else ""
    lines = [f"classifier {r['classifier']} ({r['arch']}, {r['resolution']} px, {r['channels']} ch{tta})",
             f"pixels: {row['pixels']}",
             f"real: {row['n_real']} images from {row['real']}",
             f"fake: {row['n_fake']} images from {row['fake']}",
             f"{'metric':<15} {'value':>7}   95% CI"
             + (f" ({r['bootstrap']} bootstrap)" if row["ci95"] else "")]
    for m in ROW_METRICS:
        ci = row["ci95"].get(m)
        lines.append(f"{m:<15} {row[m]:7.4f}" + (f"   [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""))
    return "\n".join(lines)


def _cell(row: dict[str, Any], m: str) -> str:
    ci = row["ci95"].get(m)
    return f"{row[m]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown_table(r: dict[str, Any]) -> str:
    how = ("images resized (Lanczos) to the classifier's resolution" if r["resize"] else
           "native pixels, no resize" + (f" ({r['fit']} to the network's fixed input)" if r["fit"] else ""))
    head = (f"Classifier `{r['classifier']}` ({r['arch']}, {r['resolution']} px, {r['channels']} ch"
            f"{', flip TTA' if r['flip_tta'] else ''}); {how}; "
            + (f"95% bootstrap intervals ({r['bootstrap']} resamples, seed {r['seed']})."
               if r["bootstrap"] else "no bootstrap."))
    lines = [head, "", "| source | perturbation | pixels | n real | n fake | acc@0 | best-thr acc | "
             "real recall | fake recall | AP | AUC |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['source']} | {row['perturbation']} | {row['pixels']} | {row['n_real']} | "
                     f"{row['n_fake']} | " + " | ".join(_cell(row, m) for m in ROW_METRICS) + " |")
    return "\n".join(lines)


def csv_text(r: dict[str, Any]) -> str:
    cols = ["source", "perturbation", "blur_sigma", "jpeg_quality", "pixels", "real", "fake",
            "n_real", "n_fake"]
    metric_cols = [c for m in ROW_METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["classifier", "arch", "resolution", "resize", *cols, *metric_cols])
    for row in r["rows"]:
        ci = [v for m in ROW_METRICS for v in (row[m], *(row["ci95"].get(m) or ("", "")))]
        w.writerow([r["classifier"], r["arch"], r["resolution"], r["resize"],
                    *("" if row[c] is None else row[c] for c in cols), *ci])
    return buf.getvalue()


def robustness_figure(r: dict[str, Any]) -> bytes:
    """PNG: AP against JPEG quality and against blur σ, one line per source (unperturbed at
    the left end of each panel)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["rows"]
    kinds = [k for k in ("jpeg_quality", "blur_sigma") if any(row[k] for row in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name in dict.fromkeys(row["source"] for row in rows):
            pts = [row for row in rows if row["source"] == name and (
                row["perturbation"] == "none" or (row[kind] and row["perturbation"].startswith(
                    "JPEG" if kind == "jpeg_quality" else "blur")))]
            if kind == "jpeg_quality":  # unperturbed first, then falling quality
                xs = [101 if row["jpeg_quality"] is None else row["jpeg_quality"] for row in pts]
            else:
                xs = [row["blur_sigma"] for row in pts]
            order = sorted(range(len(pts)), key=lambda i: -xs[i] if kind == "jpeg_quality" else xs[i])
            y = [pts[i]["ap"] for i in order]
            lo = [pts[i]["ci95"].get("ap", (pts[i]["ap"],) * 2)[0] for i in order]
            hi = [pts[i]["ci95"].get("ap", (pts[i]["ap"],) * 2)[1] for i in order]
            x = list(range(len(order)))
            ax.plot(x, y, marker="o", label=name)
            ax.fill_between(x, lo, hi, alpha=0.15)
            ax.set_xticks(x, ["none" if kind == "jpeg_quality" and xs[i] == 101 else f"{xs[i]:g}"
                              for i in order])
        ax.set_xlabel("JPEG quality" if kind == "jpeg_quality" else "blur σ (px)")
        ax.set_ylabel("AP (fake = positive)")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{r['arch']}: {'resized' if r['resize'] else 'native pixels'}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(r: dict[str, Any], out: Path) -> list[Path]:
    """eval.csv, eval.md, eval.json and, for a sweep, robustness.png into `out` (atomic)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CSV_NAME, csv_text(r))
    atomic_write_text(out / TABLE_NAME, markdown_table(r) + "\n")
    atomic_write_json(out / JSON_NAME, r)
    paths = [out / CSV_NAME, out / TABLE_NAME, out / JSON_NAME]
    if any(row["perturbation"] != "none" for row in r["rows"]):
        atomic_write_bytes(out / FIGURE_NAME, robustness_figure(r))
        paths.append(out / FIGURE_NAME)
    return paths


def single_source_record(r: dict[str, Any]) -> dict[str, Any]:
    """The old `--json` layout of a one-row result (its keys kept; oracle_accuracy, pixels added)."""
    row = r["rows"][0]
    return {"classifier": r["classifier"], "arch": r["arch"], "options": r["options"],
            "resolution": r["resolution"], "channels": r["channels"], "real": row["real"],
            "fake": row["fake"], "n_real": row["n_real"], "n_fake": row["n_fake"], "flip_tta": r["flip_tta"],
            "bootstrap": r["bootstrap"], "pixels": row["pixels"], "resize": r["resize"],
            **{m: row[m] for m in ROW_METRICS}, "ci95": row["ci95"]}


__all__ = ["METRICS", "ROW_METRICS", "Perturbation", "Source", "evaluate_sources", "fake_sources",
           "folder_sources", "format_report", "generator_sources", "markdown_table", "score", "sweep",
           "write_outputs"]
