"""The GPU path, exercised on CPU through the same code a GPU runs (issue 16).

bf16 is CPU autocast, channels_last the same memory format, `gan.compile` the aot_eager
backend (no code generation); only what needs the hardware (CUDA generators, several devices)
is simulated, by editing the stored state. Tiny sizes: real MNIST and real faces, the real loop.
"""

from __future__ import annotations

import collections
import contextlib
import json
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gangaps.config import from_dict, load_config
from gangaps.data import load_real
from gangaps.data.images import load_image_dataset
from gangaps.errors import UserError
from gangaps.io import StateWriter, cuda_rng_plan, load_state, save_state
from gangaps.models.classifiers import build_classifier
from gangaps.train.family import get_family
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator, train_generators
from gangaps.train.speed import instance_step_flops
from gangaps.train.state import TrainState
from tests.conftest import DATA, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest.one_thread)

CPU = torch.device("cpu")
FACES = DATA / "faces_ffhq256_subset" / "real"
STEP_KIMG = 0.032  # one DCGAN step of tiny_overrides' batch 32
SG_BATCH = 8


# ---------------------------------------------------------------- helpers

def _dcgan_cfg(data_root, steps: int, **extra):
    return load_config(None, tiny_overrides(**{"data.path": str(data_root),
                                               "gan.kimg": steps * STEP_KIMG, **extra}))


@pytest.fixture(scope="module")
def mnist(data_root) -> torch.Tensor:
    return load_real(_dcgan_cfg(data_root, 1).data).gan_train[:2000]


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    if not FACES.is_dir():
        pytest.skip("shared face images not available")
    return load_image_dataset(FACES, 8, 3)[:64]


def _sg_cfg(steps: int, ckpt_steps: int = 1000, lam: float = 0.0, **gan):
    kimg = lambda s: s * SG_BATCH / 1000  # noqa: E731
    return from_dict({
        "experiment": {"fool_lambda": lam},
        "gan": {"family": "stylegan2", "kimg": kimg(steps), "batch_size": SG_BATCH,
                "lr": 0.0025, "betas": [0.0, 0.99], "z_dim": 16,
                "options": {"w_dim": 16, "channel_base": 128, "channel_max": 16,
                            "mapping_layers": 1},
                "log_kimg": kimg(1000), "checkpoint_kimg": kimg(ckpt_steps), **gan}})


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("small_cnn", 1, 28, width=8)


def _jobs(root: Path, n: int, classifiers=()) -> list[GeneratorJob]:
    return [GeneratorJob(root / f"gen_{i:02d}", 20 + i, list(classifiers)) for i in range(n)]


def _train(root: Path, cfg, real, n: int, classifiers=()) -> list[dict]:
    return train_generators(_jobs(root, n, classifiers), cfg, real, CPU, progress=False,
                            group_dir=root / "group")


def _records(root: Path, n: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        lines = (root / f"gen_{i:02d}" / "log.jsonl").read_text().splitlines()
        out.append([{k: v for k, v in json.loads(s).items() if k not in ("img_per_s", "mfu")}
                    for s in lines])
    return out


class _Counting:
    """A torch.compile backend (aot_eager underneath) that counts the graphs it is given."""

    def __init__(self) -> None:
        self.graphs = 0
        torch._dynamo.reset()  # a fresh cache: earlier tests' graphs are not counted
        torch._dynamo.utils.counters.clear()

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.debugging import aot_eager
        self.graphs += 1
        return aot_eager(gm, example_inputs)

    @property
    def breaks(self) -> int:
        return sum(torch._dynamo.utils.counters["graph_break"].values())


def _register(name: str) -> _Counting:
    backend = _Counting()
    torch._dynamo.register_backend(backend, name=name)
    return backend


class _AtenOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(), float(), bool()
            # Adam reads its step counters, which live on the CPU even on CUDA: no sync
            optim = any("/torch/optim/" in f.filename for f in traceback.extract_stack())
            self.ops["host read (optimizer step counter)" if optim else "host read"] += 1
        return func(*args, **(kwargs or {}))


def _one_step_ops(tmp_path: Path, run, steps: int = 1) -> collections.Counter:
    """The aten ops of one training step through the real loop: a run of k+1 steps minus a
    run of k (setup, the last log line and checkpoint are in both)."""
    counts = []
    for k in (steps, steps + 1):
        with _AtenOps() as mode:
            run(tmp_path / f"steps{k}", k)
        counts.append(mode.ops)
    diff = counts[1].copy()
    diff.subtract(counts[0])
    return diff


# ---------------------------------------------------------------- gan.compile

def test_stylegan2_compiles_and_keeps_its_double_backward_eager(faces, tmp_path):
    """Step 0 runs all four phases, R1 and path length included (create_graph=True): compiled
    main phases, eager regularisation, the same losses as an eager run."""
    backend = _register("gangaps_test_sg")
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    fewer_graphs = {"style_mixing_prob": 0.0}  # mapping called one way: 6 graphs, not 8
    cfg = _sg_cfg(2)
    cfg.gan.options = {**cfg.gan.options, **fewer_graphs}
    train_generator(GeneratorJob(eager, seed=1), cfg, faces, CPU, progress=False)
    cfg = _sg_cfg(2, compile=True, compile_backend="gangaps_test_sg")
    cfg.gan.options = {**cfg.gan.options, **fewer_graphs}
    out = train_generator(GeneratorJob(compiled, seed=1), cfg, faces, CPU, progress=False)
    assert out["steps"] == 2 and backend.graphs > 0 and backend.breaks == 0
    a, b = ([json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
            for run in (eager, compiled))
    for k in ("loss_G", "loss_D", "pl_penalty", "r1_penalty", "D_real", "D_fake"):
        assert b[-1][k] == pytest.approx(a[-1][k], rel=1e-4, abs=1e-6), k


def test_unknown_compile_backend_is_a_one_line_error(data_root, mnist, tmp_path):
    cfg = _dcgan_cfg(data_root, 1, **{"gan.compile": True, "gan.compile_backend": "nope"})
    with pytest.raises(UserError, match="gan.compile_backend='nope'"):
        train_generator(GeneratorJob(tmp_path, seed=1), cfg, mnist, CPU, progress=False)


def test_fused_dcgan_of_8_compiles_to_one_graph_per_network(data_root, mnist, tmp_path):
    """grouped RNG: one dropout mask draw per layer for the whole group, so G and D are one
    graph each (2 in all), no graph break; the loop then trains with them, recompiling
    nothing after the first step (no_grad/grad and real/fake inputs are its 5 variants)."""
    cfg = _dcgan_cfg(data_root, 3, **{"gan.rng": "grouped", "experiment.fool_lambda": 1.0,
                                      "experiment.fool_weighting": "adaptive"})
    family = get_family("dcgan")
    state = TrainState(family, cfg.gan, _jobs(tmp_path, 8), 1, 28, len(mnist), CPU, False)
    torch._dynamo.reset()
    g = torch._dynamo.explain(state.nets["G"])(state.latents(4))
    d = torch._dynamo.explain(state.nets["D"])(state.real_batch(mnist)[:, :4])
    assert (g.graph_count, g.graph_break_count, d.graph_count, d.graph_break_count) == (1, 0, 1, 0)

    backend = _register("gangaps_test_dcgan")
    for steps in (2, 3):
        cfg = _dcgan_cfg(data_root, steps, **{"gan.rng": "grouped", "gan.compile": True,
                                              "gan.compile_backend": "gangaps_test_dcgan",
                                              "experiment.fool_lambda": 1.0,
                                              "experiment.fool_weighting": "adaptive"})
        before = backend.graphs
        _train(tmp_path / f"run{steps}", cfg, mnist, 8, [_classifier()])
        assert backend.breaks == 0
        assert backend.graphs - before <= 5  # this run's new nets: each variant once
    assert backend.graphs > 0


# ---------------------------------------------------------------- grouped random draws

def test_grouped_draws_keep_a_fused_step_near_one_instances_op_count(data_root, mnist, tmp_path):
    """aten ops of one fused DCGAN step (D and G phases, adaptive fool term, Adam) at n = 8
    within 1.3× of n = 1 with gan.rng=grouped; per-instance draws cost a loop of ops each."""
    clf = _classifier()

    def ops(rng: str, n: int) -> int:
        def run(root, k):
            cfg = _dcgan_cfg(data_root, k, **{"gan.rng": rng, "experiment.fool_lambda": 1.0,
                                              "experiment.fool_weighting": "adaptive"})
            _train(root, cfg, mnist, n, [clf])
        return sum(_one_step_ops(tmp_path / f"{rng}{n}", run).values())

    one, eight = ops("grouped", 1), ops("grouped", 8)
    assert eight <= 1.3 * one, (one, eight)
    assert ops("per-instance", 8) > 1.3 * ops("per-instance", 1)  # what grouped removes


def test_grouped_draws_are_checkpointed(data_root, mnist, tmp_path):
    """gan.rng=grouped draws from the global RNG, which the checkpoint holds: a group stopped
    after its first checkpoint resumes to the records of an uninterrupted one."""
    extra = {"gan.rng": "grouped", "gan.checkpoint_kimg": 2 * STEP_KIMG,
             "gan.log_kimg": STEP_KIMG}
    _train(tmp_path / "full", _dcgan_cfg(data_root, 4, **extra), mnist, 3)
    _train(tmp_path / "part", _dcgan_cfg(data_root, 2, **extra), mnist, 3)
    _train(tmp_path / "part", _dcgan_cfg(data_root, 4, **extra), mnist, 3)
    assert _records(tmp_path / "part", 3) == _records(tmp_path / "full", 3)
    per_instance = tmp_path / "per_instance"
    _train(per_instance, _dcgan_cfg(data_root, 4, **{**extra, "gan.rng": "per-instance"}), mnist, 3)
    assert _records(per_instance, 3) != _records(tmp_path / "full", 3)  # other draws


# ---------------------------------------------------------------- channels_last

def _is_nhwc(t: torch.Tensor) -> bool:
    return t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()


def _nhwc_params(nets: nn.ModuleDict) -> list[str]:
    """Names of the 4-d parameters with more than one spatial element (where NCHW and NHWC
    differ), each asserted NHWC by the callers."""
    return [k for k, p in nets.named_parameters() if p.ndim == 4 and p[0, 0].numel() > 1
            and p.shape[1] > 1]


def _check_nhwc(state: TrainState) -> None:
    names = _nhwc_params(state.nets)
    assert names
    params = dict(state.nets.named_parameters())
    for k in names:
        assert _is_nhwc(params[k]), k
    moments = [v for opt in state.opts.values() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.ndim == 4 and v[0, 0].numel() > 1
               and v.shape[1] > 1]
    assert moments and all(_is_nhwc(v) for v in moments)


@pytest.mark.parametrize("family_name", ["dcgan", "stylegan2"])
def test_channels_last_survives_flop_count_save_load_and_resume(family_name, data_root, mnist,
                                                                faces, tmp_path):
    if family_name == "dcgan":
        cfg = _dcgan_cfg(data_root, 4, **{"gan.channels_last": True,
                                          "gan.checkpoint_kimg": 2 * STEP_KIMG,
                                          "gan.log_kimg": STEP_KIMG})
        short = _dcgan_cfg(data_root, 2, **{"gan.channels_last": True,
                                            "gan.checkpoint_kimg": 2 * STEP_KIMG,
                                            "gan.log_kimg": STEP_KIMG})
        real, n, channels, res = mnist, 2, 1, 28
    else:
        cfg = _sg_cfg(4, ckpt_steps=2, channels_last=True, log_kimg=SG_BATCH / 1000)
        short = _sg_cfg(2, ckpt_steps=2, channels_last=True, log_kimg=SG_BATCH / 1000)
        real, n, channels, res = faces, 1, 3, 8
    family = get_family(family_name)
    jobs = _jobs(tmp_path / "part", n)
    state = TrainState(family, cfg.gan, jobs, channels, res, len(real), CPU, False)
    # the FLOP count builds throwaway nets with the same family object (it once used up
    # StyleGAN2's one-time formatting flag) and steps them; the real nets stay NHWC
    instance_step_flops(family, cfg.gan, channels, res, 4, CPU)
    phase = family.phases(cfg.gan)[0]
    out = family.phase_loss(phase, state.nets, state.real_batch(real), state.latents(4), 0)
    out.loss.sum().backward()
    state.opts[phase.opt].step()
    _check_nhwc(state)

    def run(root, c):
        if n == 1:
            return train_generator(GeneratorJob(root / "gen_00", 20), c, real, CPU, progress=False)
        return _train(root, c, real, n)

    run(tmp_path / "full", cfg)
    run(tmp_path / "part", short)  # stopped at its checkpoint (step 2) ...
    ckpt = (tmp_path / "part" / ("group" if n > 1 else "gen_00") / CHECKPOINT)
    saved = load_state(ckpt)
    resumed = TrainState(family, cfg.gan, jobs, channels, res, len(real), CPU, False)
    assert resumed.load(ckpt) and resumed.step == 2
    _check_nhwc(resumed)  # parameters and Adam's moments, loaded NHWC
    for k, v in resumed.nets.state_dict().items():
        assert torch.equal(v, saved["nets"][k]), k
    run(tmp_path / "part", cfg)  # ... and resumed to the uninterrupted run's records
    assert _records(tmp_path / "part", n) == _records(tmp_path / "full", n)


# ---------------------------------------------------------------- bf16

class _Recorder(nn.Module):
    """A frozen classifier that records what it is shown (dtype, autocast, the uint8 grid)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.seen: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = (x.detach().double() + 1) * 127.5
        y = self.conv(x)
        self.seen.append({"dtype": x.dtype, "out": y.dtype,
                          "autocast": torch.is_autocast_enabled("cpu"),
                          "off_grid": float((levels - levels.round()).abs().max())})
        return y.mean((1, 2, 3))


@contextlib.contextmanager
def _output_dtypes():
    """The dtypes of every module output (tensors) while the block runs."""
    dtypes: list[torch.dtype] = []
    hook = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype) if isinstance(o, torch.Tensor) else None)
    try:
        yield dtypes
    finally:
        hook.remove()


def _check_bf16_fool(recorder: _Recorder, fake_dtypes: list[torch.dtype]) -> None:
    assert torch.bfloat16 in fake_dtypes  # the networks did run in bf16
    assert recorder.seen
    for s in recorder.seen:  # ... and the fool term in float32, exactly on the uint8 grid
        assert s["dtype"] == s["out"] == torch.float32 and not s["autocast"]
        assert s["off_grid"] < 1e-3  # bf16 would be up to 0.5 grey level off


def test_bf16_fused_dcgan_step_runs_the_fool_term_in_fp32(data_root, mnist, tmp_path):
    recorder = _Recorder(1)
    cfg = _dcgan_cfg(data_root, 2, **{"gan.bf16": True, "gan.channels_last": True,
                                      "experiment.fool_lambda": 1.0,
                                      "experiment.fool_weighting": "adaptive"})
    jobs = _jobs(tmp_path, 3, [recorder])
    with _output_dtypes() as dtypes:
        train_generators(jobs, cfg, mnist, CPU, progress=False, group_dir=tmp_path / "group")
    _check_bf16_fool(recorder, dtypes)
    log = _records(tmp_path, 3)
    assert all(torch.isfinite(torch.tensor(r[-1]["loss_fool"])) for r in log)


def test_bf16_stylegan2_step_runs_the_fool_term_in_fp32(faces, tmp_path):
    recorder = _Recorder(3)
    cfg = _sg_cfg(2, lam=1.0, bf16=True, channels_last=True)
    with _output_dtypes() as dtypes:
        train_generator(GeneratorJob(tmp_path, 1, [recorder]), cfg, faces, CPU, progress=False)
    _check_bf16_fool(recorder, dtypes)


# ---------------------------------------------------------------- random streams anywhere

def test_cuda_streams_map_onto_any_number_of_devices():
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    # GPU 5 of 8 resumes on a Ray worker that sees one GPU (cuda:0): its own stream goes there
    assert torch.equal(cuda_rng_plan(saved, 5, 1, 0)[0], saved[5])
    # a one-GPU checkpoint on a machine of 8, the job on cuda:3
    plan = cuda_rng_plan(saved[:1], 0, 8, 3)
    assert set(plan) == {0, 3} and torch.equal(plan[3], saved[0])
    # a CPU checkpoint (no CUDA state) under device: cuda: the job's stream is reseeded
    assert cuda_rng_plan([], None, 2, 1) == {1: None}
    # a checkpoint from before the saved index: the job's device takes its own index's state
    assert torch.equal(cuda_rng_plan(saved, None, 1, 0)[0], saved[0])
    assert torch.equal(cuda_rng_plan(saved[:1], None, 4, 2)[2], saved[0])
    # no job device (e.g. a classifier's CPU run): states by index, the rest dropped
    assert list(cuda_rng_plan(saved, 5, 2, None)) == [0, 1]


def test_streams_saved_on_another_kind_of_device_resume(data_root, mnist, tmp_path, capfd):
    """A fused group's checkpoint edited as a CUDA machine with 8 devices writes it (16-byte
    Philox generator states, 8 CUDA states, the job on cuda:5) resumes here: the streams
    restart from seeds derived from the saved ones, with one warning, reproducibly."""
    extra = {"gan.checkpoint_kimg": 2 * STEP_KIMG, "gan.log_kimg": STEP_KIMG}
    _train(tmp_path / "a", _dcgan_cfg(data_root, 2, **extra), mnist, 2)
    ckpt = tmp_path / "a" / "group" / CHECKPOINT
    state = load_state(ckpt)
    for s in state["streams"]:
        s["z_gen"] = torch.arange(16, dtype=torch.uint8) + len(s)
        s["mask_gen"] = torch.arange(16, dtype=torch.uint8) * 3
    state["rng"].update(cuda=[torch.zeros(16, dtype=torch.uint8)] * 8, cuda_index=5)
    save_state(ckpt, state)
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a").rglob("*"):  # the same edited run twice
        target = tmp_path / "b" / p.relative_to(tmp_path / "a")
        target.parent.mkdir(parents=True, exist_ok=True)
        if p.is_file():
            target.write_bytes(p.read_bytes())
    capfd.readouterr()
    for run in ("a", "b"):
        _train(tmp_path / run, _dcgan_cfg(data_root, 4, **extra), mnist, 2)
    err = capfd.readouterr().err
    assert err.count("random streams saved on another kind of device") == 2
    assert _records(tmp_path / "a", 2) == _records(tmp_path / "b", 2)
    assert [r["step"] for r in _records(tmp_path / "a", 2)[0]] == [1, 2, 3, 4]


# ---------------------------------------------------------------- no host work in a step

@pytest.mark.parametrize("family_name", ["dcgan", "stylegan2"])
def test_a_step_between_log_lines_reads_nothing_back_to_the_host(family_name, data_root, mnist,
                                                                 faces, tmp_path):
    """No .item()/float()/bool() of a tensor (aten._local_scalar_dense) but Adam's CPU step
    counters in a step that writes no log line; StyleGAN2's statistics are device tensors
    (they were `.tolist()`-ed: a sync a phase)."""
    if family_name == "dcgan":
        def run(root, k):
            cfg = _dcgan_cfg(data_root, k, **{"gan.log_kimg": 100, "gan.checkpoint_kimg": 100})
            _train(root, cfg, mnist, 2)
    else:
        def run(root, k):
            train_generator(GeneratorJob(root, 1), _sg_cfg(k), faces, CPU, progress=False)
        family = get_family("stylegan2")
        cfg = _sg_cfg(1)
        nets = family.build(cfg.gan, 3, 8)
        x = (faces[:SG_BATCH].float() / 127.5 - 1)
        for phase in family.phases(cfg.gan):
            stats = family.phase_loss(phase, nets, x, torch.randn(SG_BATCH, 16), 0).stats
            assert stats and all(isinstance(v, torch.Tensor) for v in stats.values())
    ops = _one_step_ops(tmp_path, run, steps=2)
    assert sum(ops.values()) > 50 and ops["host read"] == 0, ops["host read"]


# ---------------------------------------------------------------- data on the device, checkpoints

def test_state_writer_snapshots_then_writes_in_the_background(tmp_path):
    writer = StateWriter(background=True)
    w = torch.arange(6.0)
    writer.save(tmp_path / "a.safetensors", {"w": w, "step": 3})
    w.add_(100)  # training goes on while the file is written: the file holds the snapshot
    writer.wait()
    assert torch.equal(load_state(tmp_path / "a.safetensors")["w"], torch.arange(6.0))
    (tmp_path / "file").write_text("not a folder")
    writer.save(tmp_path / "file" / "b.safetensors", {"w": w})  # fails in the thread ...
    with pytest.raises(OSError):
        writer.wait()  # ... and is raised to the training thread
    writer.wait()  # once


def test_device_data_and_background_checkpoints_keep_the_records(data_root, mnist, tmp_path):
    """Real images held where the nets are (one gather a step), checkpoints written on a
    thread at every log line (checkpoint_minutes) as well as every 2 steps: the records of a
    plain run, and a run stopped at its checkpoint resumes to them."""
    plain = {"gan.checkpoint_kimg": 2 * STEP_KIMG, "gan.log_kimg": STEP_KIMG}
    fast = {**plain, "gan.data_on_device": True, "gan.checkpoint_background": True,
            "gan.checkpoint_minutes": 1e-9}
    _train(tmp_path / "plain", _dcgan_cfg(data_root, 4, **plain), mnist, 3)
    _train(tmp_path / "fast", _dcgan_cfg(data_root, 4, **fast), mnist, 3)
    assert _records(tmp_path / "fast", 3) == _records(tmp_path / "plain", 3)
    _train(tmp_path / "part", _dcgan_cfg(data_root, 2, **fast), mnist, 3)
    assert load_state(tmp_path / "part" / "group" / CHECKPOINT)["step"] == 2  # written, whole
    _train(tmp_path / "part", _dcgan_cfg(data_root, 4, **fast), mnist, 3)
    assert _records(tmp_path / "part", 3) == _records(tmp_path / "plain", 3)
    for i in range(3):  # the instances' final checkpoints equal too
        a, b = (load_state(tmp_path / r / f"gen_{i:02d}" / CHECKPOINT)["nets"]
                for r in ("plain", "part"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_cuda_setting_at_once_trains_and_resumes_exactly(data_root, mnist, tmp_path):
    """What a GPU run of a fused DCGAN group uses by default or by choice, all at once on CPU:
    bf16, channels_last, compiled nets, grouped draws, data on the device, background
    checkpoints, the adaptive fool term; a run stopped at its checkpoint resumes to the
    uninterrupted run's records."""
    _register("gangaps_test_all")
    extra = {"gan.bf16": True, "gan.channels_last": True, "gan.compile": True,
             "gan.compile_backend": "gangaps_test_all", "gan.rng": "grouped",
             "gan.data_on_device": True, "gan.checkpoint_background": True,
             "gan.checkpoint_kimg": 2 * STEP_KIMG, "gan.log_kimg": STEP_KIMG,
             "experiment.fool_lambda": 1.0, "experiment.fool_weighting": "adaptive"}
    clf = _classifier()
    _train(tmp_path / "full", _dcgan_cfg(data_root, 4, **extra), mnist, 4, [clf])
    _train(tmp_path / "part", _dcgan_cfg(data_root, 2, **extra), mnist, 4, [clf])
    _train(tmp_path / "part", _dcgan_cfg(data_root, 4, **extra), mnist, 4, [clf])
    full = _records(tmp_path / "full", 4)
    assert _records(tmp_path / "part", 4) == full
    assert all(len(r) == 4 and r[-1]["loss_fool"] > 0 for r in full)
