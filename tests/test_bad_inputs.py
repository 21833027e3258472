"""Bad inputs, table-driven: each gives one line on stderr and exit status 2, writes nothing,
and leaves an existing run untouched. The inputs are made here, in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gangaps.cli import main
from tests import bad_files as bf
from tests import robustness as rb

CONFIG = str(rb.ROOT / "configs" / "mnist-dcgan.yaml")


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> Path:
    if not bf.MNIST.is_dir():
        pytest.skip("real MNIST absent")
    out = tmp_path_factory.mktemp("existing") / "run"
    res = rb.run(out)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def run(t: Path, run_dir: Path, *overrides: str, data: Path | None = None) -> list[str]:
    return ["run", CONFIG, *rb.overrides(), *overrides, "--out", str(run_dir),
            "--data-root", str(data or rb.DATA), "-q"]


def option(*o: str):
    return lambda t, e: run(t, e, *o)


def stylegan2(*o: str):
    return option("gan.family=stylegan2", *o)


def arch(name: str, *o: str):
    return option(f"classifiers.0.arch={name}", "classifiers.0.options={}", *o)


def out_at(make):
    return lambda t, e: run(t, make(t))


def a_file(t: Path) -> Path:
    (t / "a-file").write_text("x")
    return t / "a-file"


def read_only(t: Path) -> Path:
    (t / "ro").mkdir()
    (t / "ro").chmod(0o500)
    return t / "ro" / "run"


def config_file(text: str | bytes):
    def make(t: Path, e: Path) -> list[str]:
        path = t / "bad.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", str(path), "--out", str(e), "--data-root", str(rb.DATA), "-q"]
    return make


def mnist(replace):
    def make(t: Path, e: Path) -> list[str]:
        return run(t, e, data=bf.mnist_folder(t / "mnist", replace()))
    return make


def prepare(files, *, name="src", resolution="32"):
    def make(t: Path, e: Path) -> list[str]:
        src = bf.folder(t / name, files) if isinstance(files, dict) else files(t)
        return ["prepare-data", str(src), str(t / "out" / "cache.safetensors"),
                "--resolution", resolution, "-q"]
    return make


LABELS = "train-labels-idx1-ubyte.gz"
IMAGES = "train-images-idx3-ubyte.gz"

CASES = {
    # impossible options, every GAN family and classifier architecture
    "dcgan width 0": option("gan.options.width=0"),
    "dcgan width negative": option("gan.options.width=-0.5"),
    "dcgan width bool": option("gan.options.width=true"),
    "dcgan dropout 1.5": option("gan.options.dropout=1.5"),
    "dcgan unknown option": option("gan.options.depth=3"),
    "stylegan2 channel_base 0": stylegan2("gan.options={channel_base: 0}"),
    "stylegan2 channel_max negative": stylegan2("gan.options={channel_max: -1}"),
    "stylegan2 w_dim 0": stylegan2("gan.options={w_dim: 0}"),
    "stylegan2 mapping_layers 0": stylegan2("gan.options={mapping_layers: 0}"),
    "stylegan2 ada_target 2": stylegan2("gan.options={ada_target: 2}"),
    "stylegan2 ada_target -1.5": stylegan2("gan.options={ada_target: -1.5}"),
    "stylegan2 mbstd_group_size 0": stylegan2("gan.options={mbstd_group_size: 0}"),
    "stylegan2 r1_gamma negative": stylegan2("gan.options={r1_gamma: -1}"),
    "stylegan2 augment unknown": stylegan2("gan.options={augment: mixup}"),
    "stylegan2 on 28 px": stylegan2("gan.options={}"),
    "small_cnn width 0": option("classifiers.0.options.width=0"),
    "small_cnn width negative": option("classifiers.1.options.width=-3"),
    "patch width 0": arch("patch", "classifiers.0.options.width=0"),
    "patch depth 0": arch("patch", "classifiers.0.options.depth=0"),
    "spectrum width 0": arch("spectrum", "classifiers.0.options.width=0"),
    "spectrum head unknown": arch("spectrum", "classifiers.0.options.head=mlp"),
    "dcgan_d width negative": arch("dcgan_d", "classifiers.0.options.width=-1"),
    "resnet18 input_size 0": arch("resnet18", "classifiers.0.options.input_size=0"),
    "resnet50 stem unknown": arch("resnet50", "classifiers.0.options.stem=none"),
    "resnet18 weights_path missing": arch("resnet18", "classifiers.0.options.weights_path=/no"),
    "unknown architecture": arch("vit"),
    "unknown family": option("gan.family=biggan"),
    "z_dim 0": option("gan.z_dim=0"),
    "batch_size 0": option("gan.batch_size=0"),
    "kimg negative": option("gan.kimg=-1"),
    "beta2 = 1": option("gan.betas=[0.5,1.0]"),
    "lr beyond float32": option("gan.lr=1.0e300"),
    "fool_lambda infinite": option("experiment.fool_lambda=.inf"),
    "one instance": option("experiment.instances=1"),
    "all instances held out": option("experiment.heldout_instances=2"),
    "zero iterations": option("experiment.iterations=0"),
    "val_fraction 0.7": option("classifier_training.val_fraction=0.7"),
    "classifier lr 0": option("classifier_training.lr=0"),
    "mnist at 32 px": option("data.resolution=32"),
    "unknown key": option("gan.widht=1"),
    "override without =": lambda t, e: run(t, e, "gan.lr"),
    # --out
    "--out a file": out_at(a_file),
    "--out inside a file": out_at(lambda t: a_file(t) / "run"),
    "--out unwritable (/proc)": out_at(lambda t: Path("/proc/gangaps-run")),
    "--out a non-run folder": out_at(lambda t: bf.folder(t / "other", {"x.txt": b"x"})),
    # config files
    "config missing": lambda t, e: ["run", str(t / "nope.yaml"), "--out", str(e)],
    "YAML billion laughs": config_file(bf.BILLION_LAUGHS),
    "YAML deep nesting": config_file("a: " + "[" * 5000 + "]" * 5000 + "\n"),
    "YAML not a mapping": config_file("- 1\n- 2\n"),
    "YAML syntax error": config_file("gan: {lr: [1, 2\n"),
    "YAML binary garbage": config_file(bytes(range(256)) * 4),
    # MNIST idx files
    "idx wrong magic": mnist(lambda: {IMAGES: bf.idx_gz(b"\x00\x00\x09\x03", (1, 28, 28),
                                                         bytes(784))}),
    "idx truncated body": mnist(lambda: {IMAGES: bf.idx_gz(b"\x00\x00\x08\x03", (60000, 28, 28),
                                                            bytes(784 * 99))}),
    "idx truncated gzip": mnist(lambda: {LABELS: (bf.MNIST / LABELS).read_bytes()[:3000]}),
    "idx not gzip": mnist(lambda: {LABELS: b"hello, not gzip"}),
    "idx wrong image size": mnist(lambda: {IMAGES: bf.idx_gz(b"\x00\x00\x08\x03", (60000, 27, 27),
                                                             bytes(60000 * 27 * 27))}),
    "idx labels count mismatch": mnist(lambda: {LABELS: bf.idx_gz(b"\x00\x00\x08\x01", (10,),
                                                                  bytes(10))}),
    "idx header longer than file": mnist(lambda: {LABELS: bf.gzip.compress(b"\x00\x00\x08\x04")}),
    # image folders and zips (prepare-data)
    "images: only a truncated JPEG": prepare({"a.jpg": bf.truncated_jpeg()}),
    "images: only a corrupt JPEG": prepare({"a.jpg": bf.corrupt_jpeg()}),
    "images: only a 1x1 image": prepare({"a.png": bf.png(Image.new("RGB", (1, 1)))}),
    "images: only a 20000x20000 image": prepare({"a.png": bf.huge_png()}),
    "images: no images at all": prepare({"notes.txt": b"hello"}),
    "images: zip with ../ member": prepare(lambda t: bf.zip_with(
        t / "a.zip", {"ok.png": bf.png(bf.face()), "../evil.png": bf.png(bf.face())})),
    "images: zip with absolute member": prepare(lambda t: bf.zip_with(
        t / "a.zip", {"/etc/evil.png": bf.png(bf.face())})),
    "images: truncated zip": prepare(lambda t: bf.folder(t, {"t.zip": (bf.zip_with(
        t / "full.zip", {f"{i}.png": bf.png(bf.face(i)) for i in range(3)})).read_bytes()[:150]})
        / "t.zip"),
    "images: source missing": prepare(lambda t: t / "missing"),
    "images: resolution 0": prepare({"a.png": bf.png(bf.face())}, resolution="0"),
    # pickles where gangaps files or state dicts belong
    "evaluate-classifier of a pickle": lambda t, e: [
        "evaluate-classifier", str(bf.folder(t / "p", {"c.safetensors": bf.payload(t)}) / "c.safetensors"),
        "--real", str(bf.folder(t / "r", {"a.png": bf.png(bf.face())})), "--fake", str(t / "r")],
    "convert-nvidia of pickles": lambda t, e: [
        "convert-nvidia", str(bf.folder(t / "p", {"G.pt": bf.payload(t)}) / "G.pt"), str(t / "p/G.pt"),
        str(bf.folder(t / "c", {"c.json": b'{"z_dim": 8}'}) / "c.json"), str(t / "o.safetensors")],
    "run on a pickle image cache": lambda t, e: run(
        t, e, "data.dataset=images", "data.resolution=32", "data.channels=3",
        f"data.path={bf.folder(t / 'p', {'x.safetensors': bf.payload(t)}) / 'x.safetensors'}"),
    # run directories that are not (intact) runs
    "status of a non-run": lambda t, e: ["status", str(bf.folder(t / "x", {"a": b"1"}))],
    "verify a file": lambda t, e: ["verify", str(a_file(t))],
    "report of a missing run": lambda t, e: ["report", str(t / "nothing")],
    "status of a damaged config": lambda t, e: ["status", str(bf.folder(
        t / "dmg", {"config.yaml": b"{{{: ["}))],
}


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, existing, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GANGAPS_DATA_ROOT", raising=False)
    capsys.readouterr()
    argv = CASES[case](tmp_path, existing)
    before, run_before = _tree(tmp_path), _tree(existing)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gangaps: error:"), err
    assert _tree(tmp_path) == before, "something was written"
    assert _tree(existing) == run_before, "the existing run was touched"
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_folder(tmp_path, capsys):
    assert main(run(tmp_path, read_only(tmp_path))) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_yaml_python_tags_never_run(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    (tmp_path / "c.yaml").write_text(bf.python_tag_yaml(marker))
    assert main(["run", str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not marker.exists()
    assert main(["run", CONFIG, f"name=!!python/object/apply:os.system ['touch {marker}']",
                 "--dry-run"]) in (0, 2)  # an override value is data: a string at most
    assert not marker.exists()


def test_odd_images_are_converted_and_broken_ones_counted_and_skipped(tmp_path, capsys):
    from gangaps.data.images import load_image_dataset
    half_clear = np.zeros((64, 64, 4), np.uint8)
    half_clear[..., :3] = 200
    half_clear[:, 32:, 3] = 255  # left half transparent
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    src = bf.folder(tmp_path / "src", {
        "a_rgb.jpg": bf.jpeg(bf.face(0)),
        "b_alpha.png": bf.png(Image.fromarray(half_clear, "RGBA")),
        "c_16bit.png": bf.png(Image.fromarray(np.full((64, 64), 40000, np.uint16))),
        "d_palette.png": bf.png(pal),
        "e_cmyk.jpg": bf.jpeg(Image.new("CMYK", (64, 64), (0, 0, 0, 0))),
        "f_truncated.jpg": bf.truncated_jpeg(), "g_corrupt.jpg": bf.corrupt_jpeg(),
        "h_tiny.png": bf.png(Image.new("RGB", (1, 1))), "i_huge.png": bf.huge_png(),
    })
    dst = tmp_path / "cache.safetensors"
    assert main(["prepare-data", str(src), str(dst), "--resolution", "16", "--filter", "box",
                 "-q"]) == 0
    assert "written: 5" in capsys.readouterr().out
    import json
    summary = json.loads(dst.with_suffix(".json").read_text())
    assert summary["skipped"] == 4
    assert sorted(s["name"] for s in summary["skipped_files"]) == [
        "f_truncated.jpg", "g_corrupt.jpg", "h_tiny.png", "i_huge.png"]
    images = load_image_dataset(dst, 16, 3)
    alpha, sixteen, palette, cmyk = images[1], images[2], images[3], images[4]
    assert alpha[:, :, :8].max() == 0 and alpha[:, :, 8:].min() == 200  # transparent -> black
    assert sixteen.unique().tolist() == [40000 >> 8]  # not clipped to white
    assert palette[:, 0, 0].tolist() == [10, 20, 30]
    assert cmyk.float().mean() > 200  # CMYK (0,0,0,0) is white
