"""Released detectors (CNNDetection's ResNet-50 files) as frozen classifiers: mapping, safety, runs.

The files are stood in for by randomly initialised torchvision ResNet-50s saved in CNNDetection's
layout ({"model": state_dict, "optimizer": ..., "total_steps": ...}, fc of one output whose logit
> 0 means fake, ImageNet-normalised input).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from gangaps.cli import main
from gangaps.config import load_config
from gangaps.errors import UserError
from gangaps.experiment.graph import CLASSIFIER, build_graph
from gangaps.experiment.plan import fool_targets
from gangaps.models.classifier_zoo import IMAGENET_MEAN, IMAGENET_STD, load_released_detector
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest.one_thread)

ROOT = Path(__file__).resolve().parents[1]


def _cnndetection_file(path: Path, seed: int = 0, arch: str = "resnet50") -> torch.nn.Module:
    """A random network in the released files' layout; returns the network it holds."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(num_classes=1)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so they must load
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    opt = torch.optim.Adam(net.parameters())
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "total_steps": 7}, path)
    return net.eval()


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("weights") / "blur_jpg_prob0.1.pth"
    return path, _cnndetection_file(path)


def test_released_resnet50_maps_onto_the_zoo_with_imagenet_normalisation_and_real_positive(released) -> None:
    path, net = released
    model = load_released_detector(path, "resnet50", 3, 64).eval()
    x = torch.rand(4, 3, 64, 64) * 2 - 1  # gangaps images in [-1, 1]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = net(((x + 1) / 2 - mean) / std).reshape(-1)  # CNNDetection: logit > 0 = fake
        ours = model(x)
    torch.testing.assert_close(ours, -theirs, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(theirs, torch.zeros_like(theirs))


def test_wrong_layouts_are_one_line_errors(released, tmp_path: Path) -> None:
    r18 = tmp_path / "r18.pth"
    _cnndetection_file(r18, arch="resnet18")
    with pytest.raises(UserError, match="is not a resnet50"):
        load_released_detector(r18, "resnet50", 3, 64)
    sd = torch.load(released[0], weights_only=True)["model"]
    del sd["layer4.2.bn3.weight"]
    torch.save({"model": sd}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="missing"):
        load_released_detector(tmp_path / "partial.pth", "resnet50", 3, 64)
    with pytest.raises(UserError, match="resnet18 or resnet50"):
        load_released_detector(released[0], "small_cnn", 3, 64)


def test_code_running_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "blur_jpg_prob0.5.pth"
    torch.save({"model": _Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match="cannot load it as plain tensors"):
        load_released_detector(evil, "resnet50", 3, 64)
    assert not marker.exists()


def _run_argv(out: Path, data_root: Path, weights: Path, arch: str = "resnet50") -> list[str]:
    small = {"evaluation.n_fake": 50, "evaluation.n_real": 50, "experiment.instances": 2, "gan.kimg": 1,
             "classifier_training.n_real": 300, "classifier_training.n_fake": 300}  # ResNet-50 evaluates
    over = [o for o in tiny_overrides(**small) if not o.startswith("classifiers.1.")]
    return ["run", str(ROOT / "configs" / "mnist-dcgan.yaml"), *over, f"classifiers.1.arch={arch}",
            "classifiers.1.seeds=[0]", "classifiers.1.role=heldout", f"classifiers.1.pretrained={weights}",
            "--out", str(out), "--data-root", str(data_root), "--quiet"]


def test_code_running_pickle_in_a_runs_classifier_slot_is_one_line(tmp_path: Path, data_root: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "blur_jpg_prob0.5.pth"
    torch.save({"model": _Payload(marker), "total_steps": 1}, evil)
    capsys.readouterr()
    assert main(_run_argv(tmp_path / "run", data_root, evil)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gangaps: error:"), err
    assert "cannot load it as plain tensors" in err and str(evil) in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_pretrained_target_is_fooled_once_and_trains_nowhere(released) -> None:
    over = [o for o in tiny_overrides(**{"experiment.iterations": 3}) if not o.startswith("classifiers.1.")]
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml",
                      [*over, "classifiers.1.arch=resnet50", "classifiers.1.seeds=[0]",
                       "classifiers.1.role=target", f"classifiers.1.pretrained={released[0]}"])
    pid = "clf_resnet50_blur_jpg_prob0.1"
    assert fool_targets(cfg, 2) == ((0, "clf_small_cnn_0"), (1, "clf_small_cnn_0"), (1, pid))
    jobs = [j for j in build_graph(cfg, group_size=1) if j.kind == CLASSIFIER]
    assert {j.classifier.clf_id: j.deps for j in jobs if j.classifier.clf_id == pid} == {pid: ()}
    assert all(j.deps for j in jobs if j.classifier.clf_id != pid)  # trained ones wait for generators
    with pytest.raises(UserError, match="one network"):
        load_config(None, ["classifiers.1.seeds=[0,1]", f"classifiers.1.pretrained={released[0]}"])


def test_run_with_a_released_detector_as_heldout_classifier(tmp_path: Path, data_root: Path) -> None:
    # the released layout at resnet18 size, to keep the run small (the resnet50 mapping is tested above)
    weights = tmp_path / "blur_jpg_prob0.1.pth"
    _cnndetection_file(weights, arch="resnet18")
    out = tmp_path / "run"
    assert main(_run_argv(out, data_root, weights, arch="resnet18")) == 0
    pid = "clf_resnet18_blur_jpg_prob0.1"
    done = [json.loads((out / f"iter_0{k}" / pid / "DONE").read_text()) for k in (0, 1)]
    for d in done:
        assert d["pretrained"] == str(weights.resolve()) and d["epochs"] == 0
        assert len(d["pretrained_sha256"]) == 64
    records = [json.loads(p.read_text()) for p in sorted(out.glob("iter_*/eval/*.json"))
               if pid in p.name]
    # judged every iteration's generators, as a held-out classifier, and named in each record
    assert {(r["generator_iteration"], r["classifier_iteration"]) for r in records} == {
        (j, i) for j in (0, 1) for i in (0, 1)}
    for r in records:
        assert (r["classifier_id"], r["classifier_role"], r["classifier_arch"]) == (pid, "heldout", "resnet18")
        assert r["classifier_pretrained"] == str(weights)
    # one frozen network: iteration 0's and iteration 1's copies score a generator identically
    by = {(r["generator_iteration"], r["generator_instance"], r["classifier_iteration"]): r["metrics"]
          for r in records}
    assert by[(1, 0, 0)] == by[(1, 0, 1)]
    results = json.loads((out / "report" / "results.json").read_text())["records"]
    assert any(r.get("classifier_id") == pid for r in results)
    # and the many-source evaluation scores that run's generators with the loaded detector
    real = tmp_path / "mnist_png"
    _mnist_pngs(data_root, real, 40)
    clf = out / "iter_00" / pid / "classifier.safetensors"
    assert main(["evaluate-classifier", str(clf), "--real", str(real), "--run", str(out), "--iteration", "1",
                 "--n-fake", "30", "--bootstrap", "20", "--out", str(tmp_path / "ev"), "-q"]) == 0
    rows = json.loads((tmp_path / "ev" / "eval.json").read_text())["rows"]
    assert [r["source"] for r in rows] == ["iter_01/gen_00", "iter_01/gen_01"]
    assert all(r["n_fake"] == 30 and r["pixels"] == "resized to 28 px" for r in rows)
    # equal to single-source runs of the same pairs: the samples written by `gangaps generate`
    for r in rows:
        inst = int(r["source"][-2:])
        pngs = tmp_path / f"gen{inst}"
        assert main(["generate", str(out), "--iteration", "1", "--instance", str(inst), "--n", "30",
                     "--out", str(pngs), "-q"]) == 0
        assert main(["evaluate-classifier", str(clf), "--real", str(real), "--fake", str(pngs),
                     "--bootstrap", "20", "--json", str(tmp_path / f"s{inst}.json"), "-q"]) == 0
        single = json.loads((tmp_path / f"s{inst}.json").read_text())
        for m in ("accuracy", "oracle_accuracy", "ap", "auc"):
            assert r[m] == single[m] and r["ci95"][m] == single["ci95"][m], (inst, m)


def _mnist_pngs(data_root: Path, out: Path, n: int) -> None:
    from PIL import Image

    from gangaps.data.mnist import load_mnist
    images = load_mnist("test", data_root / "mnist")[0][:n]
    out.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img.reshape(28, 28).numpy()).save(out / f"{i:04d}.png")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
