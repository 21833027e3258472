"""The experiment's typed configuration: YAML file + dotted `key=value` overrides.

Every field has a default taken from paper.md §9 (the paper is silent on most of them) and a
one-line description; unknown keys, wrong types and impossible values stop with a one-line
`UserError` before anything is written. The resolved config is saved into every run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gangaps.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: Literal["mnist", "images"] = "mnist"
    path: str | None = Field(None, description="mnist: folder with the idx files (default "
                             "$GANGAPS_DATA_ROOT); images: folder, zip or prepared cache")
    download: bool = Field(False, description="mnist: fetch the official files if missing")
    resolution: int = Field(28, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    heldout_real: int = Field(10_000, ge=1, description="images: real images kept out of "
                              "classifier training and used as the real side of evaluation")


class ExperimentConfig(_Section):
    iterations: int = Field(5, ge=1, description="K: rounds of generators then classifiers")
    instances: int = Field(10, ge=2, description="N: independent generators per iteration")
    heldout_instances: int = Field(5, ge=1, description="generators per iteration kept out of "
                                   "classifier training (H1)")
    fool_mode: Literal["fool-all", "memoryless", "none"] = "fool-all"
    fool_lambda: float = Field(1.0, ge=0.0, description="weight λ of the fool term")
    fool_weighting: Literal["fixed", "adaptive", "controlled"] = Field(
        "fixed", description="fixed: weight λ; adaptive: λ × ‖∇L_adv‖/‖∇L_fool‖ at G's last "
        "layer, clamped to fool_adaptive_max (the fool gradient is λ times the GAN gradient); "
        "controlled: λ × m, m raised while fewer than fool_target of the fakes fool the "
        "classifiers and lowered while more do, within [1/fool_adaptive_max, fool_adaptive_max]")
    fool_adaptive_max: float = Field(10.0, gt=0, description="clamp of the adaptive ratio and "
                                     "of the controlled multiplier")
    fool_target: float = Field(0.5, gt=0.0, lt=1.0, description="controlled: the fraction of "
                               "each step's fakes the fooled classifiers should call real")
    fool_adjust_kimg: float = Field(2.0, gt=0.0, description="controlled: kimg (per instance) "
                                    "over which the multiplier can change tenfold")
    fool_start: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of training before "
                              "the fool term starts (the GAN learns the data first)")
    fool_ramp: float = Field(0.0, ge=0.0, le=1.0, description="fraction of training, after "
                             "fool_start, over which the weight ramps linearly from 0")
    init: Literal["scratch", "previous"] = Field("scratch", description="generators of "
                                                 "iteration k≥1 start from scratch or from k-1")
    reuse_iteration0: str | None = Field(None, description="run directory whose finished "
                                         "iteration 0 this run shares (sweeps)")
    iteration0_from: list[str] | None = Field(None, description="generator checkpoints (ours "
                                              "or convert-nvidia's), one per instance: "
                                              "iteration 0's generators, not trained")

    @model_validator(mode="after")
    def _split(self) -> ExperimentConfig:
        if self.heldout_instances >= self.instances:
            raise ValueError(f"heldout_instances={self.heldout_instances} leaves no train "
                             f"generator out of instances={self.instances}")
        if self.iteration0_from is not None:
            if len(self.iteration0_from) != self.instances:
                raise ValueError(f"iteration0_from lists {len(self.iteration0_from)} files for "
                                 f"instances={self.instances} (one per instance)")
            if self.reuse_iteration0 is not None:
                raise ValueError("iteration0_from and reuse_iteration0 both say where iteration "
                                 "0 comes from; set one")
        if self.fool_weighting == "controlled" and self.fool_adaptive_max <= 1:
            raise ValueError(f"fool_weighting=controlled keeps its multiplier within "
                             f"[1/fool_adaptive_max, fool_adaptive_max]; fool_adaptive_max must "
                             f"be > 1 (got {self.fool_adaptive_max})")
        return self


class GANConfig(_Section):
    family: str = Field("dcgan", description="dcgan | stylegan2")
    kimg: float = Field(3000.0, gt=0, description="training length in thousands of real "
                        "images shown to D (MNIST: 3000 kimg = 50 epochs)")
    batch_size: int = Field(256, ge=1, le=1_000_000)
    lr: float = Field(1e-4, gt=0, le=1e30)  # float32 range: above, Adam cannot step
    betas: tuple[float, float] = (0.9, 0.999)
    z_dim: int = Field(100, ge=1, le=8192)
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific "
                                    "network and loss options")
    checkpoint_kimg: float = Field(50.0, gt=0, description="checkpoint every this many kimg")
    log_kimg: float = Field(5.0, gt=0)
    sample_grid: int = Field(64, ge=1, le=4096)
    group_size: int | Literal["auto"] = Field(
        "auto", description="generator instances of one iteration trained as one fused model "
        "(1: one at a time; auto: by device and family, see gangaps.train.group_size); part of "
        "the results, so a run resumes only with the same resolved size")
    tensorboard: bool = Field(False, description="also write TensorBoard events per instance "
                              "(pip install gangaps[tensorboard])")
    snapshot_kimg: float = Field(0.0, ge=0, description="every this many kimg: a sample grid "
                                 "and a network snapshot in gen_NN/snapshots/ (0: off)")
    snapshots_kept: int = Field(5, ge=0, description="network snapshots kept (0: all)")
    snapshot_metric: Literal["none", "fid"] = Field(
        "none", description="at each snapshot also measure this, with evaluation.fid's "
        "features against the held-out reals, into gen_NN/snapshots/metric-fid.jsonl")
    snapshot_metric_n: int = Field(1000, ge=2, description="generated images per snapshot "
                                   "metric (fixed latents, seed 0)")
    bf16: bool = Field(False, description="bf16 autocast of the networks (the fool term "
                       "stays fp32); meant for CUDA, also runs (slowly) on CPU")
    channels_last: bool = Field(False, description="channels_last memory format of the "
                                "networks and their optimizer moments (CUDA; also on CPU)")
    compile: bool = Field(False, description="torch.compile the networks (CUDA)")
    compile_backend: str = Field("inductor", description="torch.compile backend of "
                                 "gan.compile (aot_eager: no code generation, for tests)")
    rng: Literal["auto", "per-instance", "grouped"] = Field(
        "auto", description="per-instance: each instance of a group draws latents and dropout "
        "masks from its own streams (a group trains exactly as its instances alone); grouped: "
        "one draw per tensor for the whole group from the global RNG (fewer ops, compilable); "
        "auto: per-instance on CPU, grouped on CUDA")
    data_on_device: bool | Literal["auto"] = Field(
        "auto", description="keep the real images on the training device, gathered there each "
        "step (auto: on CUDA when they fill at most a quarter of its memory)")
    checkpoint_minutes: float | None = Field(None, gt=0, description="also checkpoint when this "
                                             "long has passed since the last (checked at log "
                                             "lines); null: only every checkpoint_kimg")
    sync_batchnorm: bool = Field(True, description="a job split over torchrun ranks: BatchNorm "
                                 "normalises over the global batch, as one process would (false: "
                                 "each rank over its own share, with its own running statistics)")
    checkpoint_background: bool | Literal["auto"] = Field(
        "auto", description="write checkpoints on a background thread (tensors copied first, so "
        "the step never waits for the disk); auto: on CUDA")

    @model_validator(mode="after")
    def _betas(self) -> GANConfig:
        if not all(0 <= b < 1 for b in self.betas):  # Adam divides by 1 - beta2**t
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        if self.group_size != "auto" and self.group_size < 1:
            raise ValueError(f"group_size={self.group_size}: 1 or more, or auto")
        return self


class ClassifierSpec(_Section):
    arch: str = "small_cnn"
    seeds: list[int] = Field(default_factory=lambda: [0])
    role: Literal["target", "heldout"] = "target"
    options: dict[str, Any] = Field(default_factory=dict)
    pretrained: str | None = Field(None, description="a released detector's weights file (e.g. "
                                   "CNNDetection's blur_jpg_prob0.1.pth, arch resnet50): loaded, "
                                   "never trained here, the same frozen classifier in every iteration")

    @model_validator(mode="after")
    def _one_network(self) -> ClassifierSpec:
        if self.pretrained is not None and len(self.seeds) != 1:
            raise ValueError(f"a pretrained classifier is one network; seeds={self.seeds} has no meaning")
        return self


class ClassifierTrainingConfig(_Section):
    n_real: int = Field(60_000, ge=2, description="real training images (before validation split)")
    n_fake: int = Field(60_000, ge=2, description="fakes, split evenly over train generators "
                        "(with fakes=on_the_fly, n_fake × val_fraction of them validate)")
    fakes: Literal["bank", "on_the_fly"] = Field(
        "bank", description="bank: n_fake samples drawn once; on_the_fly: fresh samples from the "
        "frozen generators for every training batch")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-4, gt=0, le=1e30)  # float32 range: above, Adam cannot step
    epochs: int = Field(10, ge=1, description="maximum epochs")
    patience: int = Field(2, ge=1, description="epochs without validation gain before lr/10")
    min_lr: float = Field(1e-6, gt=0, description="stop once the learning rate falls below")
    select: Literal["accuracy", "ap", "loss"] = Field(
        "accuracy", description="validation measure for early stopping and the kept epoch: "
        "balanced accuracy at logit 0 (CNNDetection), average precision, or -BCE loss")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (AdamW)")
    ema: float = Field(0.0, ge=0, lt=1, description="per-step decay of an exponential moving "
                       "average of the weights, which is then validated and kept (0: off)")
    channels_last: bool = Field(True, description="train and judge in the channels_last "
                                "memory format (measured on 2 CPU cores: 1.4× a training step "
                                "and 1.3-2× inference of the demo's classifiers)")
    augment: dict[str, Any] = Field(default_factory=dict, description="detector augmentation "
                                    "(crop, flip, blur_prob, blur_sigma, jpeg_prob, jpeg_quality)")
    augment_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto", description="threads that prepare (augment) the next training batches while one "
        "trains (0: inline; auto: 0 on CPU, where the step already uses the job's cores, else "
        "the job's torch threads up to 8); each step is seeded by (seed, step): no effect on "
        "results")


class EvaluationConfig(_Section):
    n_fake: int = Field(10_000, ge=2, description="samples per generator for metrics and FID")
    n_real: int = Field(10_000, ge=2, description="held-out real images (MNIST: test set)")
    fid: Literal["lenet", "inception", "none"] = "lenet"
    inception_weights: str | None = Field(None, description="local Inception weights file "
                                          "(preferred); null: torch-fidelity's standard file, "
                                          "downloaded once into the torch hub cache")
    bootstrap: int = Field(0, ge=0, description="bootstrap resamples for confidence intervals")


class ResourcesConfig(_Section):
    """What one job asks of a Ray cluster (`--executor ray`; the local executor ignores it).
    Where jobs run does not change results, so this section is not part of a run's identity."""
    generator_gpus: float | None = Field(None, ge=0, le=1, description="GPU share of a "
                                         "generator job; null: by family (dcgan 0.25, "
                                         "stylegan2 1: a whole GPU)")
    classifier_gpus: float = Field(0.25, ge=0, le=1, description="GPU share of a classifier job")
    evaluation_gpus: float = Field(0.25, ge=0, le=1, description="GPU share of an evaluation job")
    cpus: int = Field(1, ge=1, description="CPUs per job, also its torch thread count (the "
                      "cluster never runs more jobs on a node than its CPUs allow)")
    generator_cpus: int | None = Field(None, ge=1, description="CPUs (torch threads) of a "
                                       "generator job; null: resources.cpus, but a fused group "
                                       "training on CPUs asks for one per instance, up to a node's")
    max_retries: int = Field(3, ge=0, description="retries of a job whose worker died (killed, "
                             "node lost); a job's own error is never retried")


class Config(_Section):
    name: str = "experiment"
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    deterministic: bool = Field(False, description="CUDA: deterministic kernels and no cuDNN "
                                "autotuning, so a run repeats bit for bit on the same GPU and "
                                "software (slower; CPU runs are deterministic already)")
    data: DataConfig = Field(default_factory=DataConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
    classifiers: list[ClassifierSpec] = Field(default_factory=lambda: [
        ClassifierSpec(seeds=[0], role="target"), ClassifierSpec(seeds=[1], role="heldout")])
    classifier_training: ClassifierTrainingConfig = Field(default_factory=ClassifierTrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not any(s.role == "target" for s in self.classifiers) and \
                self.experiment.fool_mode != "none" and self.experiment.iterations > 1:
            raise ValueError("no classifier has role 'target', so there is nothing to fool")
        if self.gan.snapshot_metric != "none":  # no flag accepted and then ignored
            if not self.gan.snapshot_kimg:
                raise ValueError("gan.snapshot_metric measures at snapshots: set "
                                 "gan.snapshot_kimg > 0 (or gan.snapshot_metric=none)")
            if self.evaluation.fid == "none":
                raise ValueError("gan.snapshot_metric=fid measures with evaluation.fid's "
                                 "features, and evaluation.fid=none: set lenet or inception")
        ids = [cid for s in self.classifiers for cid in classifier_ids(s)]
        if len(ids) != len(set(ids)):
            raise ValueError(f"classifier ids repeat: {sorted(ids)}")
        return self


def classifier_ids(spec: ClassifierSpec) -> list[str]:
    if spec.pretrained is not None:  # named after its file: clf_resnet50_blur_jpg_prob0.1
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(spec.pretrained).stem) or "pretrained"
        return [f"clf_{spec.arch}_{stem}"]
    return [f"clf_{spec.arch}_{seed}" for seed in spec.seeds]


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"override {dotted}: {key!r} is not a section")
        node = node.setdefault(key, {})
    if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
        node[int(leaf)] = value
    elif isinstance(node, dict):
        node[leaf] = value
    else:
        raise UserError(f"override {dotted}: cannot set {leaf!r} here")


def apply_overrides(tree: dict, items: list[str]) -> dict:
    """Set each dotted `key=value` (values parsed as YAML) in `tree`; list items by index."""
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (e.g. gan.lr=2e-4)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        except RecursionError:
            raise UserError(f"override {key}: value nested too deeply") from None
        _check_size(value, f"override {key}")
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif isinstance(first.get("input"), (str, int, float, bool)):
        msg += f" (got {first['input']!r})"
    n = err.error_count()
    more = f" (and {n - 1} more problem{'s' if n > 2 else ''})" if n > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


MAX_NODES = 100_000  # far above any real config; stops YAML alias bombs ("billion laughs")


def _check_size(tree: Any, where: str) -> None:
    """Count values, shared ones (YAML aliases) once per use, and stop past MAX_NODES."""
    stack, n = [tree], 0
    while stack:
        node = stack.pop()
        n += 1
        if n > MAX_NODES:
            raise UserError(f"{where}: more than {MAX_NODES} values (nested YAML aliases?); "
                            "refusing it")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load (no Python tags: nothing is constructed but plain data), one-line errors."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None


def from_dict(tree: dict) -> Config:
    _check_size(tree, "config")
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise UserError(f"config: {_format_error(e)}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None) and apply dotted overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        if path.stat().st_size > 2**20:
            raise UserError(f"{path}: {path.stat().st_size} bytes is not a config (> 1 MiB)")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read the config ({e.__class__.__name__})") from None
        tree = parse_yaml(text, str(path)) or {}
        if not isinstance(tree, dict):
            raise UserError(f"{path}: expected a mapping at the top level")
        _check_size(tree, str(path))
    # start from the defaults so overrides can reach into default lists (classifiers.0.seeds)
    tree = _merge(Config().model_dump(mode="json"), tree)
    return from_dict(apply_overrides(tree, list(overrides)))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
