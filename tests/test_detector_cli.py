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

FACES = DATA / "faces_ffhq256_subset"
N_TRAIN, N_TEST = 100, 20  # 120 files per side: 100 to train on, 20 other files to evaluate on


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the 2-core box is shared; one intra-op thread is also faster for these tiny nets
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
