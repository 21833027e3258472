"""Integrity: checksummed files, damaged checkpoints, pickles with payloads, `gangaps verify`."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from gangaps.cli import main
from gangaps.errors import CorruptFile, UserError
from gangaps.io import load_state, previous_path, save_state, verify_file
from tests import robustness as rb

# -- the checksum -------------------------------------------------------------------------------


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_every_damaged_byte_is_detected(tmp_path):
    path = tmp_path / "c.safetensors"
    save_state(path, {"w": torch.arange(64.0), "step": 3})
    size = path.stat().st_size
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    for at in [0, 9, header // 2, header - 2, header + 1, size // 2, size - 1]:
        save_state(path, {"w": torch.arange(64.0), "step": 3})
        _flip(path, at)
        with pytest.raises(CorruptFile):
            load_state(path)
        assert verify_file(path) is not None
    save_state(path, {"w": torch.arange(64.0), "step": 3})
    path.write_bytes(path.read_bytes()[:size - 7])  # truncated
    with pytest.raises(CorruptFile, match="c.safetensors"):
        load_state(path)


def test_files_from_before_checksums_still_load(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, tmp_path / "old.safetensors",
              metadata={"gangaps": json.dumps({"w": {"__tensor__": "w"}})})
    assert torch.equal(load_state(tmp_path / "old.safetensors")["w"], torch.ones(2))


def test_checkpoints_keep_the_previous_version(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    for step in (1, 2, 3):
        save_state(path, {"step": step}, keep_previous=True)
    assert load_state(path)["step"] == 3 and load_state(previous_path(path))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.prev.safetensors", "checkpoint.safetensors"]


# -- pickles with a payload: no loader runs them ---------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(plain pickle, torch.save zip, marker the payload would create)."""
    marker = tmp_path / "PWNED"
    plain, zipped = tmp_path / "plain.safetensors", tmp_path / "zipped.pt"
    plain.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    torch.save({"model": _Payload(marker)}, zipped)
    probe = tmp_path / "probe"  # the payload is real: unpickling it unsafely does run it
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    return plain, zipped, marker


def _lenet(path: Path) -> None:
    from gangaps.metrics.lenet import INFO_FILE, MODEL_FILE, load_or_train_lenet
    cache = path.parent / "lenet-cache"
    cache.mkdir(exist_ok=True)
    shutil.copy(path, cache / MODEL_FILE)
    (cache / INFO_FILE).write_text(json.dumps({"test_accuracy": 0.99, "hash": "x"}))
    load_or_train_lenet(cache, root=rb.DATA)


def _inception(path: Path) -> None:
    from gangaps.metrics.inception import load_inception
    load_inception(path)


def _resnet_weights(path: Path) -> None:
    from gangaps.models.classifiers import build_classifier
    build_classifier("resnet18", 3, 32, weights_path=str(path))


def _nvidia(path: Path) -> None:
    from gangaps.models.stylegan2_import import convert_nvidia_files
    cfg = path.parent / "config.json"
    cfg.write_text(json.dumps({"z_dim": 8, "w_dim": 8, "img_resolution": 8, "img_channels": 3}))
    convert_nvidia_files(path, path, cfg, path.parent / "out.safetensors")


def _converted(path: Path) -> None:
    from gangaps.models.stylegan2_import import load_converted
    load_converted(path)


def _generator(path: Path) -> None:
    from gangaps.generators import load_generator
    load_generator(path)


def _classifier(path: Path) -> None:
    from gangaps.train.classifier import load_classifier
    load_classifier(path)


def _image_cache(path: Path) -> None:
    from gangaps.data.images import load_image_dataset
    target = path.with_name("cache.safetensors")
    shutil.copy(path, target)
    load_image_dataset(target, 32, 3)


LOADERS = {"checkpoint": load_state, "generator": _generator, "classifier": _classifier,
           "converted NVIDIA weights": _converted, "NVIDIA state dicts": _nvidia,
           "LeNet cache": _lenet, "Inception weights": _inception,
           "ResNet weights_path": _resnet_weights, "image cache": _image_cache}


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_pickle_with_a_payload_never_runs(loader, fmt, tmp_path):
    plain, zipped, marker = _payload_files(tmp_path)
    with pytest.raises(UserError):
        LOADERS[loader](plain if fmt == "pickle" else zipped)
    assert not marker.exists()


# -- damaged checkpoints in a run --------------------------------------------------------------


@pytest.fixture
def reference(tiny_reference: Path) -> Path:
    return tiny_reference


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    # killed inside the 4th checkpoint write: checkpoints 2 (prev) and 3 (newest) on disk
    assert rb.run(out, GANGAPS_CRASH_AT="iter_00/gen_01/checkpoint.safetensors:4").returncode == -9
    ckpt = out / "iter_00/gen_01/checkpoint.safetensors"
    _flip(ckpt, ckpt.stat().st_size // 2)
    res = rb.run(out)
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(ckpt) in warnings[0]
    assert "resuming from the previous checkpoint" in warnings[0]
    assert rb.records(out) == rb.records(reference)  # the same results, one step back


def test_both_checkpoints_damaged_restarts_with_one_warning(tmp_path, capsys):
    from gangaps.io import load_resumable
    path = tmp_path / "checkpoint.safetensors"
    for step in (1, 2):
        save_state(path, {"step": step}, keep_previous=True)
    assert load_resumable(path)["step"] == 2 and capsys.readouterr().err == ""
    _flip(path, path.stat().st_size - 1)
    assert load_resumable(path)["step"] == 1
    previous_path(path).write_bytes(previous_path(path).read_bytes()[:20])
    assert load_resumable(path) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "previous checkpoint" in err[0] and "from scratch" in err[1]


def test_a_damaged_file_of_a_finished_job_names_it_and_the_fix(tmp_path, capsys):
    out = tmp_path / "run"
    # iteration 0 finished; killed as iteration 1 starts training against its target classifier
    assert rb.run(out, GANGAPS_CRASH_AT="iter_01/gen_00/log.jsonl:1").returncode == -9
    final = out / "iter_00/clf_small_cnn_0/classifier.safetensors"
    _flip(final, final.stat().st_size - 3)
    before = rb.finished_jobs(out)
    res = rb.run(out)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr[-2000:]
    assert str(final) in err[0] and f"delete {final.parent}" in err[0]
    assert rb.finished_jobs(out) == before
    # verify says the same, and nothing else
    assert main(["verify", str(out)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and str(final) in lines[0] and "1 problem" in lines[1]
    shutil.rmtree(final.parent)  # the advice works
    assert rb.run(out).returncode == 0
    assert main(["verify", str(out)]) == 0


def test_verify_an_intact_run(reference, capsys):
    assert main(["verify", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "all intact" in out and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncated", "not a result"])
def test_a_damaged_evaluation_file_is_one_line_and_redone_after_deleting_it(reference, tmp_path,
                                                                           capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    bad = sorted((out / "iter_01" / "eval").glob("*.json"))[0]
    text = bad.read_text()
    bad.write_text(text[: len(text) // 2] if damage == "truncated" else '["no", "keys"]')
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "delete it" in err[0], err
    assert main(["verify", str(out)]) == 1 and str(bad) in capsys.readouterr().out
    bad.unlink()  # the advice works: the same command redoes that one evaluation
    assert rb.run(out).returncode == 0
    assert json.loads(bad.read_text()) == json.loads(text)
    assert rb.records(out) == rb.records(reference)
