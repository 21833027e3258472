"""`gangaps train-classifier` / `evaluate-classifier` end to end on real faces vs StyleGAN faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gangaps.cli import main
from gangaps.data.images import load_image_dataset, prepare_data
from gangaps.metrics.detection import detection_metrics
from gangaps.train.classifier import classify, load_classifier
from tests.conftest import DATA

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest.one_thread)

FACES = DATA / "faces_ffhq256_subset"
N_TRAIN, N_TEST = 100, 20  # 120 files per side: 100 to train on, 20 other files to evaluate on


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/{real,fake} and test/{real,fake} folders of distinct files."""
    if not (FACES / "real").is_dir():
        pytest.skip(f"face subset not found under {FACES}")
    root = tmp_path_factory.mktemp("faces")
    for side, src in (("real", "real"), ("fake", "stylegan_fake")):
        files = sorted((FACES / src).glob("*.jpg"))[:N_TRAIN + N_TEST]
        for split, chunk in (("train", files[:N_TRAIN]), ("test", files[N_TRAIN:])):
            (root / split / side).mkdir(parents=True)
            for f in chunk:
                shutil.copy(f, root / split / side / f.name)
    return root


def _train_args(faces: Path, out: Path, *extra: str) -> list[str]:
    return ["train-classifier", "--real", str(faces / "train/real"), "--fake", str(faces / "train/fake"),
            "--out", str(out), "--arch", "small_cnn", "--option", "width=8", "--resolution", "32",
            "--epochs", "2", "--flip", "--crop", "28", "--blur-prob", "0.1", "--blur-sigma", "0,1",
            "--jpeg-prob", "0.1", "-q", *extra]


@pytest.fixture(scope="module")
def trained(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clf") / "small"
    assert main(_train_args(faces, out)) == 0
    return out


def test_train_writes_classifier_log_and_summary(trained: Path) -> None:
    for name in ("classifier.safetensors", "log.jsonl", "summary.json", "checkpoint.safetensors"):
        assert (trained / name).is_file(), name
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 2 and 1 <= summary["best_epoch"] <= 2
    assert summary["n_real"] == N_TRAIN and summary["n_fake"] == N_TRAIN
    assert summary["settings"]["augment"]["crop"] == 28
    assert summary["settings"]["options"] == {"width": 8}


def test_evaluate_on_other_files(trained: Path, faces: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval.json"
    rc = main(["evaluate-classifier", str(trained / "classifier.safetensors"), "--real",
               str(faces / "test/real"), "--fake", str(faces / "test/fake"), "--bootstrap", "200",
               "--json", str(out), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    for metric in ("accuracy", "real_recall", "fake_recall", "ap", "auc"):
        assert metric in printed
    r = json.loads(out.read_text())
    assert r["n_real"] == N_TEST and r["n_fake"] == N_TEST
    assert (r["arch"], r["resolution"], r["channels"]) == ("small_cnn", 32, 3)
    for metric in ("accuracy", "real_recall", "fake_recall", "ap", "auc"):
        assert 0.0 <= r[metric] <= 1.0
        low, high = r["ci95"][metric]
        assert 0.0 <= low <= high <= 1.0
    # balanced accuracy is the mean of the two recalls, whatever the classifier learned
    assert r["accuracy"] == pytest.approx((r["real_recall"] + r["fake_recall"]) / 2)


def test_evaluate_with_flip_tta_scores_the_mean_of_both_views(trained: Path, faces: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    rc = main(["evaluate-classifier", str(trained / "classifier.safetensors"), "--real",
               str(faces / "test/real"), "--fake", str(faces / "test/fake"), "--bootstrap", "0",
               "--flip-tta", "--json", str(out), "-q"])
    assert rc == 0
    r = json.loads(out.read_text())
    model = load_classifier(trained / "classifier.safetensors")
    for side in ("real", "fake"):
        prepare_data(faces / "test" / side, tmp_path / side, 32, progress=False)
    real, fake = (load_image_dataset(tmp_path / side, 32, 3) for side in ("real", "fake"))
    both = [(classify(model, x) + classify(model, x.flip(-1))) / 2 for x in (real, fake)]
    assert r["flip_tta"] is True
    assert r["ap"] == pytest.approx(detection_metrics(*both)["ap"])
    assert r["ap"] != pytest.approx(detection_metrics(classify(model, real), classify(model, fake))["ap"])


def test_rerun_does_not_retrain(trained: Path, faces: Path, capsys: pytest.CaptureFixture) -> None:
    log, clf = (trained / "log.jsonl").read_bytes(), (trained / "classifier.safetensors").read_bytes()
    capsys.readouterr()
    assert main(_train_args(faces, trained)) == 0
    assert "already trained" in capsys.readouterr().err
    assert (trained / "log.jsonl").read_bytes() == log
    assert (trained / "classifier.safetensors").read_bytes() == clf


def test_other_settings_in_same_out_refused(trained: Path, faces: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(_train_args(faces, trained, "--lr", "0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "lr" in err


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gangaps: error:"), err
    return err


def test_missing_folder_is_one_line_exit_2(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = _train_args(faces, tmp_path / "o")
    argv[argv.index("--fake") + 1] = str(tmp_path / "nope")
    assert "--fake: not found" in _one_line_error(argv, capsys)
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are checked


def test_empty_folder_is_one_line_exit_2(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    argv = _train_args(faces, tmp_path / "o")
    argv[argv.index("--real") + 1] = str(tmp_path / "empty")
    assert "no images found" in _one_line_error(argv, capsys)


def test_mismatched_channels_is_one_line_exit_2(faces: Path, trained: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    gray = tmp_path / "gray"
    prepare_data(faces / "test/fake", gray, 32, channels=1, progress=False)
    argv = _train_args(faces, tmp_path / "o", "--channels", "3")
    argv[argv.index("--fake") + 1] = str(gray)
    assert "mismatched channels" in _one_line_error(argv, capsys)
    rgb = tmp_path / "rgb"  # two caches that disagree, no --channels
    prepare_data(faces / "test/real", rgb, 32, channels=3, progress=False)
    argv = _train_args(faces, tmp_path / "o")
    argv[argv.index("--real") + 1], argv[argv.index("--fake") + 1] = str(rgb), str(gray)
    assert "mismatched channels" in _one_line_error(argv, capsys)
    err = _one_line_error(["evaluate-classifier", str(trained / "classifier.safetensors"), "--real",
                           str(faces / "test/real"), "--fake", str(gray)], capsys)
    assert "mismatched channels" in err


def test_too_few_images_for_the_batch(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = _train_args(faces, tmp_path / "o", "--batch-size", "256")
    assert "fewer than half of --batch-size" in _one_line_error(argv, capsys)
    assert not (tmp_path / "o" / "settings.json").exists()  # a corrected command may follow


def test_fake_source_required(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [a for a in _train_args(faces, tmp_path / "o")]
    i = argv.index("--fake")
    del argv[i:i + 2]
    assert "--fake DIR or as --run" in _one_line_error(argv, capsys)


def test_on_the_fly_needs_generators(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(_train_args(faces, tmp_path / "o", "--fakes", "on-the-fly"), capsys)
    assert "--fakes on-the-fly" in err and "--run" in err


def test_help_explains_flags_and_folders(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train-classifier", "--help"])
    text = capsys.readouterr().out
    for flag in ("--real", "--fake", "--run", "--iteration", "--instances", "--option", "--crop",
                 "--blur-prob", "--jpeg-prob", "0_real"):
        assert flag in text


def test_bad_training_value_names_the_flag(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(_train_args(faces, tmp_path / "o", "--val-fraction", "0.7"), capsys)
    assert "--val-fraction" in err
    assert not (tmp_path / "o").exists()
    err = _one_line_error(_train_args(faces, tmp_path / "o", "--weight-decay", "-1"), capsys)
    assert "--weight-decay" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- many sources, native pixels, sweeps


def _eval_json(argv: list[str], path: Path) -> dict:
    assert main([*argv, "--json", str(path), "-q"]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def more_fakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 StyleGAN files neither in train/ nor in test/: a second fake source."""
    root = tmp_path_factory.mktemp("more")
    for f in sorted((FACES / "stylegan_fake").glob("*.jpg"))[N_TRAIN + N_TEST:N_TRAIN + 2 * N_TEST]:
        shutil.copy(f, root / f.name)
    return root


def test_many_sources_equal_single_source_runs(trained: Path, faces: Path, more_fakes: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clf = str(trained / "classifier.safetensors")
    real, fake_a = str(faces / "test/real"), str(faces / "test/fake")
    # a folder of folders in CNNDetection's layout: each source has its own 0_real / 1_fake
    cnndet = tmp_path / "cnndet" / "styleganB"
    shutil.copytree(faces / "train/real", cnndet / "0_real")
    shutil.copytree(more_fakes, cnndet / "1_fake")
    out = tmp_path / "table"
    capsys.readouterr()
    assert main(["evaluate-classifier", clf, "--real", real, "--fake", f"stylegan={fake_a}",
                 "--fake", f"more={more_fakes}", "--sources", str(cnndet.parent), "--bootstrap", "100",
                 "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| stylegan |" in printed and "| more |" in printed and "| styleganB |" in printed
    table = json.loads((out / "eval.json").read_text())
    rows = {r["source"]: r for r in table["rows"]}
    assert list(rows) == ["stylegan", "more", "styleganB"]
    pairs = {"stylegan": (real, fake_a), "more": (real, str(more_fakes)),
             "styleganB": (str(cnndet / "0_real"), str(cnndet / "1_fake"))}
    for name, (r_src, f_src) in pairs.items():
        single = _eval_json(["evaluate-classifier", clf, "--real", r_src, "--fake", f_src, "--bootstrap",
                             "100"], tmp_path / f"{name}.json")
        row = rows[name]
        assert (row["n_real"], row["n_fake"]) == (single["n_real"], single["n_fake"])
        for m in ("accuracy", "oracle_accuracy", "real_recall", "fake_recall", "ap", "auc"):
            assert row[m] == single[m], (name, m)
            assert row["ci95"][m] == single["ci95"][m], (name, m)
    assert rows["styleganB"]["n_real"] == N_TRAIN  # its own real side, not --real
    csv_lines = (out / "eval.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "oracle_accuracy_lo" in csv_lines[0]
    md = (out / "eval.md").read_text()
    assert "resized (Lanczos)" in md and "best-thr acc" in md


def test_resized_and_native_pixels_differ_and_say_which(trained: Path, faces: Path, tmp_path: Path) -> None:
    clf = str(trained / "classifier.safetensors")
    argv = ["evaluate-classifier", clf, "--real", str(faces / "test/real"), "--fake",
            f"sg={faces / 'test/fake'}", "--bootstrap", "0"]
    assert main([*argv, "--out", str(tmp_path / "resized"), "-q"]) == 0
    assert main([*argv, "--no-resize", "--out", str(tmp_path / "native"), "-q"]) == 0
    resized = json.loads((tmp_path / "resized/eval.json").read_text())["rows"][0]
    native = json.loads((tmp_path / "native/eval.json").read_text())["rows"][0]
    assert resized["pixels"] == "resized to 32 px" and native["pixels"] == "native 256 px"
    assert native["ap"] != resized["ap"] and native["auc"] != resized["auc"]
    assert "| native 256 px |" in (tmp_path / "native/eval.md").read_text()
    assert "native pixels, no resize" in (tmp_path / "native/eval.md").read_text()
    assert ",native 256 px," in (tmp_path / "native/eval.csv").read_text()
    # the native logits are the network's on the 256 px files themselves
    model = load_classifier(trained / "classifier.safetensors")
    r256, f256 = (load_image_dataset(faces / "test" / s, 256, 3) for s in ("real", "fake"))
    m = detection_metrics(classify(model, r256, resize=False), classify(model, f256, resize=False))
    assert native["ap"] == pytest.approx(m["ap"]) and native["accuracy"] == pytest.approx(m["accuracy"])


def test_fixed_input_network_is_cropped_or_tiled_at_native_pixels(faces: Path, tmp_path: Path) -> None:
    from gangaps.detector_eval import score
    from gangaps.models.classifiers import build_classifier
    from gangaps.train.classifier import save_classifier
    torch.manual_seed(0)
    model = build_classifier("dcgan_d", 3, 64, width=4)  # flatten + dense: 64 px inputs only
    path = tmp_path / "dcgan_d.safetensors"
    save_classifier(path, model, "dcgan_d", {"width": 4}, 3, 64, {})
    argv = ["evaluate-classifier", str(path), "--real", str(faces / "test/real"), "--fake",
            str(faces / "test/fake"), "--bootstrap", "0", "--no-resize"]
    crop = _eval_json([*argv, "--fit", "crop"], tmp_path / "crop.json")
    tile = _eval_json([*argv, "--fit", "tile"], tmp_path / "tile.json")
    assert crop["pixels"] == "native 256 px, centre 64 px crop"
    assert tile["pixels"] == "native 256 px, mean of 16 64 px tiles"
    model = load_classifier(path)
    real = load_image_dataset(faces / "test/real", 256, 3)
    by_hand = torch.stack([classify(model, real[:, :, t:t + 64, s:s + 64].contiguous(), resize=False)
                           for t in range(0, 256, 64) for s in range(0, 256, 64)]).mean(0)
    got = score(model, list(real), torch.device("cpu"), resize=False, fit="tile")
    torch.testing.assert_close(got, by_hand)
    assert crop["ap"] != tile["ap"]


def test_robustness_sweep_table_and_figure(trained: Path, faces: Path, more_fakes: Path,
                                           tmp_path: Path) -> None:
    clf = str(trained / "classifier.safetensors")
    argv = ["evaluate-classifier", clf, "--real", str(faces / "test/real"), "--fake",
            f"a={faces / 'test/fake'}", "--fake", f"b={more_fakes}", "--jpeg-quality", "90,30",
            "--blur-sigma", "0,2", "--bootstrap", "50",
            "-q", "--out"]
    assert main([*argv, str(tmp_path / "one")]) == 0
    r = json.loads((tmp_path / "one/eval.json").read_text())
    got = [(row["source"], row["perturbation"]) for row in r["rows"]]
    assert got == [(s, p) for s in "ab" for p in ("none", "JPEG q=90", "JPEG q=30", "blur σ=2")]
    aps = {(row["source"], row["perturbation"]): row["ap"] for row in r["rows"]}
    assert aps["a", "JPEG q=30"] != aps["a", "none"] and aps["a", "blur σ=2"] != aps["a", "none"]
    assert (tmp_path / "one/robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, str(tmp_path / "two")]) == 0  # seeded: the same numbers again
    assert (tmp_path / "one/eval.csv").read_text() == (tmp_path / "two/eval.csv").read_text()


def test_bad_many_source_inputs_are_one_line(trained: Path, faces: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    clf = str(trained / "classifier.safetensors")
    base = ["evaluate-classifier", clf, "--real", str(faces / "test/real")]
    assert "JPEG quality" in _one_line_error([*base, "--fake", str(faces / "test/fake"),
                                              "--jpeg-quality", "120"], capsys)
    assert "repeat" in _one_line_error([*base, "--fake", f"x={faces / 'test/fake'}", "--fake",
                                        f"x={faces / 'test/real'}"], capsys)
    assert "no fake source" in _one_line_error(base, capsys)
    (tmp_path / "empty").mkdir()
    assert "no subfolders" in _one_line_error([*base, "--sources", str(tmp_path / "empty")], capsys)
