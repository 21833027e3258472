"""The run directory: the only code that knows where things live in it.

    runs/<name>/config.yaml                    resolved config, written once
    runs/<name>/iter_KK/gen_NN/                checkpoint, samples.png, log.jsonl, quality.json, DONE
    runs/<name>/iter_KK/group_NN-MM/           checkpoint of instances NN..MM trained fused
    runs/<name>/iter_KK/clf_<arch>_<seed>/     checkpoint, classifier.safetensors, log.jsonl, DONE
    runs/<name>/iter_KK/quality/gen_NN.json    FID of one generator
    runs/<name>/iter_KK/eval/cII_<clf>__gen_NN.json  a classifier of iteration II on one generator
    runs/<name>/report/                        index.html, results.json, figures/*.png
    runs/<name>/jobs.jsonl                     where and when each job ran (driver's log)

A job is done when its DONE marker exists; DONE is written last, atomically, so a crash leaves
either a finished job or one that resumes from its checkpoint. A fused group resumes from its
group checkpoint; it writes its instances' own checkpoints when it has finished, then their
DONE markers, so every gen_NN/ ends as a job trained alone would leave it.

One process writes a run at a time: `.lock` is held with flock(2) (atomic; the kernel drops it
when its holder dies) and names the holder's pid. The stored config may only be *extended*
(more iterations, more held-out classifier seeds); see `extension_problem`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gangaps.config import Config, from_dict, parse_yaml, to_yaml
from gangaps.errors import CorruptFile, UserError
from gangaps.io import atomic_write_json, atomic_write_text, read_json

DONE = "DONE"
_HELD: dict[str, int] = {}  # run lock files this process holds -> their descriptors (re-entrant)


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

    def group_dirs(self, k: int) -> dict[Path, range]:
        """Iteration k's fused-group directories (there while a member is unfinished) and the
        instances each trains."""
        out = {}
        for d in sorted(self.iteration_dir(k).glob("group_*-*")):
            lo, _, hi = d.name.removeprefix("group_").partition("-")
            if lo.isdigit() and hi.isdigit():
                out[d] = range(int(lo), int(hi) + 1)
        return out

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
    def jobs_log_path(self) -> Path:
        return self.root / "jobs.jsonl"  # the driver's log: one line per finished job

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
        try:
            return read_json(job_dir / DONE)
        except (OSError, ValueError):
            raise CorruptFile(job_dir / DONE, f"damaged DONE marker; {redo_hint(job_dir)}") from None

    # -- config -------------------------------------------------------------------------
    def load_config(self) -> Config:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run directory")
        if not self.config_path.exists():
            raise UserError(f"{self.root} is not a gangaps run (no config.yaml)")
        try:
            tree = parse_yaml(self.config_path.read_text("utf-8"), str(self.config_path))
        except (UserError, UnicodeDecodeError):
            raise CorruptFile(self.config_path, "damaged run config (not valid YAML)") from None
        if not isinstance(tree, dict):
            raise CorruptFile(self.config_path, "damaged run config (not a mapping)")
        cfg = from_dict(tree)
        if cfg.gan.group_size == "auto":  # a run made before fused groups: one at a time
            cfg.gan.group_size = 1
        return cfg

    def check_config(self, cfg: Config) -> bool:
        """UserError unless `cfg` can run here: a new run, the same config, or an extended one
        (see `extension_problem`). True when config.yaml must be (re)written. Writes nothing."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} is a file, not a directory")
        if self.config_path.exists():
            old = self.load_config()
            if _comparable(old) == _comparable(cfg):
                return False
            problem = extension_problem(old, cfg)
            if problem is None:
                return True
            raise UserError(f"{self.root} holds a run with a different config ({problem}); "
                            "use another --out or the same settings to resume")
        if self.root.exists() and any(p.name != self.lock_path.name for p in self.root.iterdir()):
            self._refuse_if_locked()  # a run starting this instant: its config is not there yet
            raise UserError(f"{self.root} exists and is not a gangaps run; choose another --out")
        return True

    def _refuse_if_locked(self) -> None:
        """UserError naming the writer when a live process holds the lock. Its pid is in the
        lock file before it writes anything else, and reading it never disturbs its flock."""
        pid = self.running_pid()
        if pid and pid != os.getpid():
            raise self._busy(pid)

    def check_or_write_config(self, cfg: Config) -> None:
        """A new run writes its config; an extended one replaces the stored one, atomically
        (status and report read the old config or the new, never half)."""
        if self.check_config(cfg):
            atomic_write_text(self.config_path, to_yaml(cfg))

    # -- lock: one process writes a run at a time ----------------------------------------
    def acquire(self) -> None:
        """Take the run's lock or raise UserError naming its holder; creates the directory."""
        key = str(self.lock_path.absolute())
        if key in _HELD:
            return
        _check_writable_dir(self.root)
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(f"cannot write the run directory {self.root}: "
                                f"{e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise self._busy(pid or "(starting)") from None
            try:  # the holder before us may have removed the file: lock the one on disk
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        pid = _read_pid(fd)  # a writer that locks without flock (older gangaps) still counts
        if pid and pid != os.getpid() and _alive(pid):
            os.close(fd)
            raise self._busy(pid)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = fd

    def _busy(self, pid: int | str) -> UserError:
        return UserError(f"{self.root} is being written by process {pid}")

    def release(self) -> None:
        fd = _HELD.pop(str(self.lock_path.absolute()), None)
        if fd is not None:  # never another writer's lock
            self.lock_path.unlink(missing_ok=True)  # while still holding it
            os.close(fd)

    def running_pid(self) -> int | None:
        try:
            pid = int(self.lock_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None


def redo_hint(job_dir: Path) -> str:
    """How to redo one job whose files are damaged."""
    return f"delete {job_dir} and run the same command again to redo that job"


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError, UnicodeDecodeError):
        return 0


def _check_writable_dir(root: Path) -> None:
    """--out must be (or become) a directory this process may write; UserError otherwise."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {root}: {e.strerror or e}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the run directory {root}: permission denied")


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
    """Settings that change results; `device` and `resources` (where jobs run),
    `gan.tensorboard` (what is logged) and how checkpoints are written and data held may differ
    between a run and its resume."""
    flat = _flatten(cfg.model_dump(mode="json", exclude={"resources"}))
    flat.pop("device", None)
    flat.pop("deterministic", None)  # how kernels run, like device
    flat.pop("gan.tensorboard", None)
    for key in ("gan.snapshot_kimg", "gan.snapshots_kept", "gan.snapshot_metric",
                "gan.snapshot_metric_n"):
        flat.pop(key, None)  # snapshots watch a run; they change no result
    for key in ("gan.checkpoint_minutes", "gan.checkpoint_background", "gan.data_on_device",
                "classifier_training.augment_workers"):
        flat.pop(key, None)  # when and how state is written or held, not what is computed
    return flat


def extension_problem(old: Config, new: Config) -> str | None:
    """Why `new` cannot continue a run made with `old` (None: it can).

    A run may be extended by more iterations and by more held-out classifiers (more seeds of
    a held-out entry, or new held-out entries): nothing already trained depends on them.
    Everything else (a target classifier included: later generators fool it) must stay.
    """
    a, b = _comparable(old), _comparable(new)
    for flat in (a, b):
        flat.pop("experiment.iterations")
        flat.pop("classifiers")
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        return f"{', '.join(diff[:4])}{'…' if len(diff) > 4 else ''} differ"
    if new.experiment.iterations < old.experiment.iterations:
        return (f"experiment.iterations {old.experiment.iterations} -> "
                f"{new.experiment.iterations}: a run can be extended, not shortened")
    if len(new.classifiers) < len(old.classifiers):
        return "classifiers removed"
    for i, (o, n) in enumerate(zip(old.classifiers, new.classifiers)):
        if (o.arch, o.role, o.options) != (n.arch, n.role, n.options):
            return f"classifiers.{i} changed"
        if not set(o.seeds) <= set(n.seeds):
            return f"classifiers.{i}.seeds lost {sorted(set(o.seeds) - set(n.seeds))}"
        if o.role == "target" and set(n.seeds) != set(o.seeds):
            return (f"classifiers.{i}.seeds: new target classifiers would change what later "
                    "generators fool; add them as a held-out entry")
    if any(n.role == "target" for n in new.classifiers[len(old.classifiers):]):
        return "new classifiers with role target (only held-out ones can be added)"
    return None


# What may differ between runs that share one iteration 0 (sweeps): nothing iteration 0 uses.
_AFTER_ITERATION0 = ("name", "experiment.iterations", "experiment.fool_mode",
                     "experiment.fool_lambda", "experiment.fool_weighting",
                     "experiment.fool_adaptive_max", "experiment.fool_target",
                     "experiment.fool_adjust_kimg", "experiment.fool_start",
                     "experiment.fool_ramp", "experiment.init", "experiment.reuse_iteration0")


def iteration0_view(cfg: Config) -> dict:
    flat = _comparable(cfg)
    for key in _AFTER_ITERATION0:
        flat.pop(key, None)
    flat["classifiers"] = [{k: v for k, v in c.items() if k != "role"}
                           for c in flat["classifiers"]]
    return flat
