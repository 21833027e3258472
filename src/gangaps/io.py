"""Files that survive a crash, carry a checksum, and load without executing code.

Every file gangaps writes goes through here: written to a temporary name in the same folder,
flushed and fsynced, then renamed over the target, so a reader sees the old file or the new one,
never half. State (networks, optimizers, RNG, counters) is saved as one safetensors file:
tensors in the body, everything else as a JSON skeleton in the header metadata. Loading parses
JSON and raw tensors only, so an untrusted checkpoint cannot run code (unlike pickle).

Every safetensors file written here carries a SHA-256 of its own bytes in its header
(`gangaps_sha256`, computed with that field zeroed), checked on every load: a truncated or
bit-flipped file is a `CorruptFile`, never whatever the parser makes of it. Checkpoints can
keep their previous version (`keep_previous`), so a resume falls back to it (`load_resumable`).

Test hook: `GANGAPS_CRASH_AT=SUBSTRING:K` SIGKILLs the process in the middle of its K-th write
(temporary file complete, not yet renamed) to a path containing SUBSTRING, so tests can crash
a run deterministically inside a checkpoint write (tests/test_robustness_crash.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from gangaps.errors import CorruptFile, DiskFull, warn

CHECKSUM_KEY = "gangaps_sha256"
_CHECKSUM_FIELD = f'"{CHECKSUM_KEY}":"'.encode()
_PLACEHOLDER = b"0" * 64
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_crash_counts: dict[str, int] = {}


def _crash_hook(path: Path) -> None:
    """The test hook of the module docstring; a no-op unless GANGAPS_CRASH_AT is set."""
    spec = os.environ.get("GANGAPS_CRASH_AT")
    if not spec:
        return
    sub, _, k = spec.rpartition(":")
    if sub and sub in str(path):
        _crash_counts[sub] = _crash_counts.get(sub, 0) + 1
        if _crash_counts[sub] == int(k):
            os.kill(os.getpid(), signal.SIGKILL)


def _disk_full(e: BaseException, path: Path) -> DiskFull | None:
    """A DiskFull for an out-of-space / file-too-large error (OSError or safetensors')."""
    codes = {getattr(e, "errno", None)}
    codes |= {c for c in _FULL if f"os error {c})" in str(e)}  # safetensors wraps the OSError
    code = next((c for c in _FULL if c in codes), None)
    if code is None:
        return None
    return DiskFull(f"cannot write {path}: {os.strerror(code)}; the previous version is kept, "
                    "free some space and run the same command again")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_path(path: str | Path) -> Path:
    """Where `keep_previous` keeps the version before the newest: name.prev.suffix."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _write_atomic(path: Path, write: Any, keep_previous: bool = False) -> None:
    """Run write(tmp_path) on a temporary file beside `path`, fsync it, rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _crash_hook(path)
        if keep_previous and path.exists():  # a hard link: `path` never disappears meanwhile
            prev, link = previous_path(path), f"{tmp}.prev"
            os.link(path, link)
            os.replace(link, prev)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, SafetensorError) as e:
        full = _disk_full(e, path)
        if full is not None:
            raise full from None
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(f"{tmp}.prev").unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _write_atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


_TENSOR = "__tensor__"
_ITEMS = "__items__"  # dicts whose keys are not all strings (optimizer state uses int keys)
_TUPLE = "__tuple__"


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text("utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    """The whole lines of a JSONL file ([] if there is none): a crash or a full disk can cut
    the last line, which is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text("utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line; a crash can lose the last line but never corrupt earlier ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _crash_hook(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise (_disk_full(e, path) or e) from None


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "t"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, tensors, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()}
        return {_ITEMS: [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _ITEMS in obj:
            return {k: _unflatten(v, tensors) for k, v in obj[_ITEMS]}
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _checksum(f: Any) -> tuple[bytes | None, str, int]:
    """(stored checksum or None, SHA-256 of the file with the checksum zeroed, its offset)."""
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(prefix, "little")
    if n > min(_MAX_HEADER, size - 8):
        raise ValueError("truncated (header longer than the file)")
    header = bytearray(f.read(n))
    at = header.find(_CHECKSUM_FIELD)
    stored = None
    if at >= 0:
        at += len(_CHECKSUM_FIELD)
        stored = bytes(header[at:at + 64])
        header[at:at + 64] = _PLACEHOLDER
    h = hashlib.sha256(prefix)
    h.update(header)
    while chunk := f.read(16 * 2**20):
        h.update(chunk)
    return stored, h.hexdigest(), 8 + at


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 keep_previous: bool = False) -> None:
    """A checksummed safetensors file, written atomically (the previous one kept if asked)."""
    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={**metadata, CHECKSUM_KEY: _PLACEHOLDER.decode()})
        with open(tmp, "rb+") as f:
            _, digest, at = _checksum(f)
            f.seek(at)
            f.write(digest.encode())

    _write_atomic(Path(path), write, keep_previous)


def verify_file(path: str | Path) -> str | None:
    """What is wrong with a safetensors file written by save_tensors, or None if it is intact.

    Files from before checksums (no `gangaps_sha256`) pass if they parse.
    """
    try:
        with open(path, "rb") as f:
            stored, digest, _ = _checksum(f)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except ValueError as e:
        return f"not a safetensors file: {e}"
    if stored is not None and stored != digest.encode():
        return "checksum mismatch (the file is damaged)"
    return None


def load_tensors(path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file after checking its checksum; no code runs."""
    problem = verify_file(path)
    if problem is not None:
        raise CorruptFile(path, problem)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device=str(device)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CorruptFile(path, f"not a readable safetensors file ({str(e).splitlines()[0]})") from None


def save_state(path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Save a nested dict of tensors and JSON values (e.g. state_dicts, optimizer states, RNG).

    keep_previous: first move the current file to `previous_path(path)` (checkpoints).
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "")
    save_tensors(path, tensors, {"gangaps": json.dumps(skeleton)}, keep_previous)


class StateWriter:
    """`save_state`, optionally on a background thread, one file at a time. The state's tensors
    are copied to host memory before `save` returns (training may change them meanwhile); the
    hashing, writing, fsync and rename then run beside the caller. `wait()` before anything
    that needs the file; a failed write (a full disk) is raised by the next `save` or `wait`."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
        self.wait()
        tensors: dict[str, torch.Tensor] = {}
        meta = {"gangaps": json.dumps(_flatten(state, tensors, ""))}  # the copy to the host
        if not self.background:
            save_tensors(path, tensors, meta, keep_previous)
            return

        def write() -> None:
            try:
                save_tensors(path, tensors, meta, keep_previous)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e

        self._thread = threading.Thread(target=write, name=f"checkpoint {Path(path).name}")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Inverse of save_state. Reads JSON and raw tensors only: never executes code.

    A truncated, damaged or foreign file (a pickle, say) raises CorruptFile.
    """
    tensors, meta = load_tensors(path, device)
    if "gangaps" not in meta:
        raise CorruptFile(path, "not a gangaps checkpoint (no 'gangaps' metadata)")
    try:
        return _unflatten(json.loads(meta["gangaps"]), tensors)
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFile(path, f"damaged checkpoint metadata ({e})") from None


def load_resumable(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest intact state of a checkpoint kept with `keep_previous`, None if there is none.

    A damaged newest version falls back to the previous one; if both are damaged the job
    restarts (None). Either way with one warning line. Temporary files a killed writer left
    beside the checkpoint are removed (the caller owns the job: the run lock).
    """
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp*"):  # of a killed writer: the job is ours
        tmp.unlink(missing_ok=True)
    bad: list[str] = []
    for p in (path, previous_path(path)):
        if not p.exists():
            continue
        try:
            state = load_state(p, device)
        except CorruptFile as e:
            bad.append(f"{p} ({e.reason})")
            continue
        if bad:
            warn(f"{'; '.join(bad)}: resuming from the previous checkpoint {p.name}")
        return state
    if bad:
        warn(f"{'; '.join(bad)}: no intact checkpoint left, restarting the job from scratch")
    return None


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Torch RNG states: CPU and, when present, every visible CUDA device, plus the index of
    the job's own CUDA device (`device`): the stream a resume must continue, wherever it runs.
    Every state is raw bytes (CPU: MT19937, 5056; CUDA: Philox seed and offset, 16), so the
    file is the same on any machine; `set_rng_state` maps it onto the devices it finds."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
        if device is not None and device.type == "cuda":
            state["cuda_index"] = _cuda_index(device)
    return state


def _cuda_index(device: torch.device) -> int:
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def derived_seed(saved: torch.Tensor) -> int:
    """A seed that is a function of a saved generator state (a stream that cannot continue on
    this kind of device restarts from it: different, but reproducible)."""
    digest = hashlib.sha256(saved.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def restore_generator(gen: torch.Generator, saved: torch.Tensor) -> bool:
    """Set `gen` to a saved state; True if it continues exactly. A state of another kind of
    generator (a CPU stream resumed on CUDA or back: another size) reseeds `gen` with
    `derived_seed` instead of failing with torch's 'RNG state is wrong size'."""
    if saved.numel() == gen.get_state().numel():
        gen.set_state(saved)
        return True
    gen.manual_seed(derived_seed(saved))
    return False


def cuda_rng_plan(saved: list[torch.Tensor], saved_index: int | None, count: int,
                  own_index: int | None) -> dict[int, torch.Tensor | None]:
    """Which saved CUDA state goes to which visible device (None: reseed it). The job's own
    stream (saved at `saved_index`) goes to the job's device (`own_index`) whatever the two
    indices: a checkpoint of GPU 5 of 8 resumes on a Ray worker's only GPU (cuda:0). Other
    visible devices take the saved states by index while both exist; the rest are dropped."""
    plan: dict[int, torch.Tensor | None] = dict(zip(range(count), saved))
    if own_index is not None and own_index < count:
        if saved_index is not None and saved_index < len(saved):
            plan[own_index] = saved[saved_index]
        elif own_index < len(saved):  # no index saved (older checkpoints): the same device's
            plan[own_index] = saved[own_index]
        else:  # the one GPU it was saved with, or none at all (a CPU checkpoint): reseed
            plan[own_index] = saved[0] if len(saved) == 1 else None
    return plan


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> bool:
    """Restore `rng_state`, saved here or on a machine with another number of CUDA devices
    (see `cuda_rng_plan`; `device`: the job's device now). True if every stream continues
    exactly, False if some had to restart from `derived_seed` (no CUDA state saved for the
    job's device: a CPU checkpoint resumed on CUDA)."""
    torch.set_rng_state(state["cpu"])
    if not torch.cuda.is_available():
        return True
    own = _cuda_index(device) if device is not None and torch.device(device).type == "cuda" \
        else None
    exact = True
    plan = cuda_rng_plan(list(state.get("cuda", [])), state.get("cuda_index"),
                         torch.cuda.device_count(), own)
    for i, saved in plan.items():
        gen = torch.cuda.default_generators[i]
        if saved is None:
            gen.manual_seed(derived_seed(state["cpu"]) + i)
            exact = exact and i != own
        else:
            exact = restore_generator(gen, saved) and exact
    return exact
