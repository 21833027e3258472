"""The run directory: the only code that knows where things live in it.

    runs/<name>/config.yaml                    resolved config, written once
    runs/<name>/iter_KK/gen_NN/                checkpoint, samples.png, log.jsonl, quality.json, DONE
    runs/<name>/iter_KK/group_NN-MM/           checkpoint of instances NN..MM trained fused
    runs/<name>/iter_KK/clf_<arch>_<seed>/     checkpoint, classifier.safetensors, log.jsonl, DONE
    runs/<name>/iter_KK/quality/gen_NN.json    FID of one generator
    runs/<name>/iter_KK/eval/cII_<clf>__gen_NN.json  a classifier of iteration II on one generator
    runs/<name>/report/                        index.html, results.json, figures/*.png

A job is done when its DONE marker exists; DONE is written last, atomically, so a crash leaves
either a finished job or one that resumes from its checkpoint. A fused group resumes from its
group checkpoint; it writes its instances' own checkpoints when it has finished, then their
DONE markers, so every gen_NN/ ends as a job trained alone would leave it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from gangaps.config import Config, from_dict, to_yaml
from gangaps.errors import UserError
from gangaps.io import atomic_write_json, atomic_write_text, read_json

DONE = "DONE"


class RunStore:
    def __init__(self, root: str | Path, shared_iteration0: str | Path | None = None) -> None:
        self.root = Path(root)
        self.shared_iteration0 = Path(shared_iteration0) if shared_iteration0 else None

    # -- layout -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def iteration_dir(self, k: int) -> Path:
        if k == 0 and self.shared_iteration0 is not None:
            return self.shared_iteration0 / "iter_00"
        return self.root / f"iter_{k:02d}"

    def generator_dir(self, k: int, n: int) -> Path:
        return self.iteration_dir(k) / f"gen_{n:02d}"

    def group_dir(self, k: int, instances: list[int]) -> Path:
        return self.iteration_dir(k) / f"group_{instances[0]:02d}-{instances[-1]:02d}"

    def classifier_dir(self, k: int, clf_id: str) -> Path:
        return self.iteration_dir(k) / clf_id

    def eval_path(self, gen_iter: int, gen_instance: int, clf_iter: int, clf_id: str) -> Path:
        # evaluations of shared iteration-0 generators by this run's classifiers stay in this run
        return self.root / f"iter_{gen_iter:02d}" / "eval" / \
            f"c{clf_iter:02d}_{clf_id}__gen_{gen_instance:02d}.json"

    def quality_path(self, gen_iter: int, gen_instance: int) -> Path:
        return self.root / f"iter_{gen_iter:02d}" / "quality" / f"gen_{gen_instance:02d}.json"

    def eval_files(self) -> list[Path]:
        return sorted(self.root.glob("iter_*/eval/*.json"))

    def quality_files(self) -> list[Path]:
        return sorted(self.root.glob("iter_*/quality/*.json"))

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    # -- done markers -------------------------------------------------------------------
    @staticmethod
    def is_done(job_dir: Path) -> bool:
        return (job_dir / DONE).exists()

    @staticmethod
    def mark_done(job_dir: Path, summary: dict) -> None:
        atomic_write_json(job_dir / DONE, summary)

    @staticmethod
    def done_summary(job_dir: Path) -> dict:
        return read_json(job_dir / DONE)

    # -- config -------------------------------------------------------------------------
    def load_config(self) -> Config:
        if not self.config_path.exists():
            raise UserError(f"{self.root} is not a gangaps run (no config.yaml)")
        return from_dict(yaml.safe_load(self.config_path.read_text()))

    def check_or_write_config(self, cfg: Config) -> None:
        """A new run writes its config; an existing run resumes only with the same config."""
        if self.config_path.exists():
            old = self.load_config()
            a, b = _comparable(old), _comparable(cfg)
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise UserError(f"{self.root} holds a run with a different config "
                                f"({', '.join(diff[:4])}{'…' if len(diff) > 4 else ''} differ); "
                                "use another --out or the same settings to resume")
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise UserError(f"{self.root} exists and is not a gangaps run; choose another --out")
        atomic_write_text(self.config_path, to_yaml(cfg))

    # -- lock: one process writes a run at a time ----------------------------------------
    def acquire(self) -> None:
        if self.lock_path.exists():
            try:
                pid = int(self.lock_path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise UserError(f"{self.root} is being written by process {pid}")
        atomic_write_text(self.lock_path, str(os.getpid()))

    def release(self) -> None:
        self.lock_path.unlink(missing_ok=True)

    def running_pid(self) -> int | None:
        try:
            pid = int(self.lock_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process whose parent never reaped it (a container with no init) still answers
    # kill(pid, 0) as a zombie; it writes nothing, so its lock is stale. Linux only.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _comparable(cfg: Config) -> dict:
    """Settings that change results; `device` may differ between a run and its resume."""
    flat = _flatten(cfg.model_dump(mode="json"))
    flat.pop("device", None)
    return flat


# What may differ between runs that share one iteration 0 (sweeps): nothing iteration 0 uses.
_AFTER_ITERATION0 = ("name", "experiment.iterations", "experiment.fool_mode",
                     "experiment.fool_lambda", "experiment.fool_weighting",
                     "experiment.fool_adaptive_max", "experiment.fool_start",
                     "experiment.fool_ramp", "experiment.init", "experiment.reuse_iteration0")


def iteration0_view(cfg: Config) -> dict:
    flat = _comparable(cfg)
    for key in _AFTER_ITERATION0:
        flat.pop(key, None)
    flat["classifiers"] = [{k: v for k, v in c.items() if k != "role"}
                           for c in flat["classifiers"]]
    return flat
