"""A metric per snapshot (gan.snapshot_metric=fid): one line per snapshot with the run's FID
flavour, training unchanged by it, a crash before the line repaired by the resume without
duplicates, TensorBoard scalars, and the report's curve. Real MNIST, real DCGAN, real LeNet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gangaps.config import Config, from_dict
from gangaps.experiment.evaluate import QualityMeter
from gangaps.experiment.jobs import load_data
from gangaps.generators import generate, load_generator
from gangaps.io import load_state, read_jsonl
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generators
from gangaps.train.snapshots import METRIC_SEED, SNAPSHOTS, metric_path
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread", "session_lenet")

BATCH, N_FAKE, N_REAL = 32, 200, 500
CPU = torch.device("cpu")


def _cfg(data_root: Path, metric: str = "fid", tensorboard: bool = False) -> Config:
    kimg = lambda s: s * BATCH / 1000  # noqa: E731
    return from_dict({
        "data": {"path": str(data_root)}, "evaluation": {"fid": "lenet", "n_real": N_REAL},
        "gan": {"family": "dcgan", "kimg": kimg(12), "batch_size": BATCH, "lr": 2e-4,
                "betas": [0.5, 0.999], "options": {"width": 0.125}, "sample_grid": 4,
                "log_kimg": kimg(4), "checkpoint_kimg": kimg(1000), "snapshot_kimg": kimg(4),
                "snapshots_kept": 1, "snapshot_metric": metric, "snapshot_metric_n": N_FAKE,
                "tensorboard": tensorboard}})


def _events(out: Path) -> dict[str, list[int]]:
    """The steps of the snapshot events in an instance's TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(out / "tensorboard"))
    ev.Reload()
    return {"fid": [e.step for e in ev.Scalars("snapshot/fid_lenet")],
            "grid": [e.step for e in ev.Images("snapshot")]}


@pytest.fixture(scope="module")
def meter(data_root: Path) -> QualityMeter:
    cfg = _cfg(data_root)
    return QualityMeter(cfg, load_data(cfg), CPU)


def _train(root: Path, cfg: Config, meter: QualityMeter, seeds=(0, 1), metric=None):
    """Instances `seeds` (two: one fused group); `metric`: the meter's unless given."""
    jobs = [GeneratorJob(root / f"gen_{s:02d}", seed=s) for s in seeds]
    if cfg.gan.snapshot_metric != "none":
        metric = metric or meter.snapshot_record
    train_generators(jobs, cfg, meter.real.gan_train, CPU, progress=False,
                     group_dir=root / "group" if len(jobs) > 1 else None, snapshot_metric=metric)
    return jobs


def _lines(out: Path) -> list[dict]:
    return read_jsonl(metric_path(out, "fid"))


def test_one_line_per_snapshot_and_training_unchanged(meter, data_root: Path,
                                                      tmp_path: Path) -> None:
    on = _train(tmp_path / "on", _cfg(data_root), meter)
    for job in on:  # a fused group of two: each instance its own file
        lines = _lines(job.out_dir)
        assert [r["step"] for r in lines] == [4, 8, 12]
        assert [r["kimg"] for r in lines] == [0.128, 0.256, 0.384]
        for r in lines:
            assert r["metric"] == "fid_lenet" and r["features"] == "lenet"
            assert (r["n_fake"], r["n_real"]) == (N_FAKE, N_REAL)
            assert math.isfinite(r["value"]) and r["value"] > 0
            assert r["snapshot"] == f"network-{r['step']:06d}.safetensors"
        # the last line measures the final generator, from the fixed latents
        final = generate(load_generator(job.out_dir / CHECKPOINT), N_FAKE, seed=METRIC_SEED)
        assert lines[-1]["value"] == meter.snapshot_record(final)["value"]
    assert _lines(on[0].out_dir) != _lines(on[1].out_dir)
    # measuring changes no training number: same weights with the metric off
    off = _train(tmp_path / "off", _cfg(data_root, metric="none"), meter)
    for a, b in zip(on, off, strict=True):
        wa, wb = load_state(a.out_dir / CHECKPOINT)["nets"], load_state(b.out_dir / CHECKPOINT)["nets"]
        assert all(torch.equal(wa[k], wb[k]) for k in wb)
        assert not metric_path(b.out_dir, "fid").exists()


def test_crash_before_the_line_is_repaired_once(meter, data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tensorboard=True)
    whole = _train(tmp_path / "whole", cfg, meter, seeds=(2,))[0].out_dir

    class Killed(Exception):
        pass

    calls = []

    def dies_at_the_second(fake: torch.Tensor) -> dict:  # step 8: checkpoint, net, grid written
        calls.append(len(fake))
        if len(calls) == 2:
            raise Killed
        return meter.snapshot_record(fake)

    with pytest.raises(Killed):
        _train(tmp_path / "split", cfg, meter, seeds=(2,), metric=dies_at_the_second)
    split = tmp_path / "split" / "gen_02"
    assert [r["step"] for r in _lines(split)] == [4]
    assert (split / SNAPSHOTS / "network-000008.safetensors").exists()
    _train(tmp_path / "split", cfg, meter, seeds=(2,))  # resumes at step 8, measures it
    assert _lines(split) == _lines(whole)
    # the resume rebuilt the events from the files: each snapshot once, in order
    assert _events(split) == _events(whole) == {"fid": [4, 8, 12], "grid": [4, 8, 12]}
    a, b = load_state(whole / CHECKPOINT)["nets"], load_state(split / CHECKPOINT)["nets"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    _train(tmp_path / "split", cfg, meter, seeds=(2,))  # finished: nothing is measured twice
    assert _lines(split) == _lines(whole)


def test_run_with_snapshot_metric_draws_the_curve(data_root: Path, tmp_path: Path) -> None:
    from gangaps.cli import main
    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    args = ["run", str(root / "configs" / "mnist-dcgan.yaml"), *tiny_overrides(**{
        "experiment.iterations": 1, "experiment.instances": 2, "gan.kimg": 0.384,
        "gan.snapshot_kimg": 0.128, "gan.snapshot_metric": "fid", "gan.snapshot_metric_n": N_FAKE,
        "gan.tensorboard": "true", "evaluation.fid": "lenet", "classifier_training.epochs": 1}),
        "--out", str(out), "--data-root", str(data_root), "--quiet"]
    assert main(args) == 0
    gen = out / "iter_00" / "gen_01"
    assert [r["step"] for r in _lines(gen)] == [4, 8, 12]
    assert _events(gen) == {"fid": [4, 8, 12], "grid": [4, 8, 12]}
    results = json.loads((out / "report" / "results.json").read_text())
    curves = results["snapshot_curves"]
    assert [(c["generator_instance"], len(c["points"])) for c in curves] == [(0, 3), (1, 3)]
    assert (out / "report" / "figures" / "snapshot_metric.png").exists()
    page = (out / "report" / "index.html").read_text()
    assert f"{N_FAKE} generated against 200 held-out real images per point" in page


@pytest.mark.parametrize("extra, says", [
    ({"gan.snapshot_kimg": 0}, "gan.snapshot_kimg > 0"),
    ({"evaluation.fid": "none"}, "evaluation.fid=none"),
])
def test_a_metric_that_cannot_run_is_a_config_error(extra: dict, says: str) -> None:
    from gangaps.config import apply_overrides
    from gangaps.errors import UserError
    tree = apply_overrides({}, [f"{k}={v}" for k, v in {
        "gan.snapshot_kimg": 1, "gan.snapshot_metric": "fid", **extra}.items()])
    with pytest.raises(UserError, match=says):
        from_dict(tree)


def test_stylegan2_inception_metric_resumes_with_its_history(tmp_path: Path) -> None:
    """Faces at 16², the run's Inception flavour (random weights made here: the code path, not
    a meaningful number), a crash before the second line, the resume keeps the first."""
    from tests.conftest import DATA
    from tests.test_metrics_inception import _make_weights
    faces = DATA / "faces_ffhq256_subset" / "real"
    if not faces.is_dir():
        pytest.skip("shared face images not available")
    weights = tmp_path / "random-inception.pth"
    _make_weights(weights, seed=0)
    batch, n = 8, 8  # Inception on CPU is the cost here: few images
    cfg = from_dict({
        "data": {"dataset": "images", "path": str(faces), "resolution": 16, "channels": 3,
                 "heldout_real": n},
        "evaluation": {"fid": "inception", "inception_weights": str(weights), "n_real": n},
        "gan": {"family": "stylegan2", "kimg": 8 * batch / 1000, "batch_size": batch,
                "z_dim": 16, "sample_grid": 4, "log_kimg": 4 * batch / 1000,
                "checkpoint_kimg": 1, "snapshot_kimg": 4 * batch / 1000,
                "snapshot_metric": "fid", "snapshot_metric_n": n,
                "options": {"w_dim": 16, "channel_base": 128, "channel_max": 16,
                            "mapping_layers": 1}}})
    meter = QualityMeter(cfg, load_data(cfg), CPU)
    meter.real.gan_train = meter.real.gan_train[:64]

    def dies_at_step_8(fake: torch.Tensor) -> dict:
        if (out / SNAPSHOTS / "network-000008.safetensors").exists():
            raise RuntimeError("killed")
        return meter.snapshot_record(fake)

    out = tmp_path / "gen_00"
    with pytest.raises(RuntimeError, match="killed"):
        _train(tmp_path, cfg, meter, seeds=(0,), metric=dies_at_step_8)
    first = _lines(out)
    assert [r["step"] for r in first] == [4]
    _train(tmp_path, cfg, meter, seeds=(0,))
    lines = _lines(out)
    assert [r["step"] for r in lines] == [4, 8] and lines[0] == first[0]
    for r in lines:
        assert r["metric"] == "fid_inception" and math.isfinite(r["value"])
        assert (r["n_fake"], r["n_real"]) == (n, n)
        assert r["protocol"]["feature_extractor"] and r["protocol"]["n_real"] == n
