"""Where jobs run: `local` (this process, one after another, in the graph's order) or `ray`
(a Ray cluster: each job a task as soon as the jobs it waits for are done).

An executor only schedules: it gets jobs with dependencies and a function that runs one job,
and it knows nothing of what the jobs do. Ray supplies what a home-made scheduler would get
wrong: resource accounting (fractional GPUs, CPUs per job), retries of a task whose worker
died (the retry resumes from the job's checkpoint) and the same code on a laptop, a
workstation, SLURM or Kubernetes.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from gangaps.config import Config
from gangaps.errors import UserError
from gangaps.experiment.graph import CLASSIFIER, EVALUATION, GENERATOR, Job

Work = Callable[[Job, "str | None"], dict]  # (job, device or None: the driver's) -> record


class Progress:
    """One line per finished job, with jobs done / running / waiting and an ETA. Under ray,
    "running/queued" counts the jobs handed to Ray (some may wait there for resources);
    "waiting" the jobs still waiting for others."""

    def __init__(self, jobs: list[Job], show: bool, on_record: Callable[[Job, dict], None],
                 detail: Callable[[Job], str] = lambda job: "") -> None:
        self.total, self.show, self.on_record, self.detail = len(jobs), show, on_record, detail
        self.left = {j.key: j.kind for j in jobs}
        self.running: set[str] = set()
        self.seconds: dict[str, list[float]] = {}  # kind -> durations of finished jobs
        self.t0 = time.time()

    def started(self, job: Job) -> None:
        self.running.add(job.key)

    def finished(self, job: Job, record: dict) -> None:
        self.running.discard(job.key)
        self.left.pop(job.key, None)
        record = {**record, "host": record.get("host", socket.gethostname())}
        self.on_record(job, record)
        if record.get("skipped"):
            return
        took = record["end"] - record["start"]
        self.seconds.setdefault(job.kind, []).append(took)
        if self.show:
            done = self.total - len(self.left)
            extra = self.detail(job)
            tqdm.write(f"[{done}/{self.total}] {job.label}: done in {took:.0f}s"
                       f"{f' ({extra})' if extra else ''} on {record['host']} | "
                       f"{len(self.running)} running/queued, "
                       f"{len(self.left) - len(self.running)} waiting, ETA {self.eta()}", file=sys.stderr)

    def eta(self) -> str:
        """Remaining jobs × mean time of their kind so far, over the parallelism seen so far."""
        every = [s for v in self.seconds.values() for s in v]
        if not every:
            return "?"
        mean = {k: sum(v) / len(v) for k, v in self.seconds.items()}
        work = sum(mean.get(kind, sum(every) / len(every)) for kind in self.left.values())
        parallel = max(1.0, sum(every) / max(time.time() - self.t0, 1e-9))
        s = work / parallel
        return f"{s / 60:.0f}m" if s >= 90 else f"{s:.0f}s"


class LocalExecutor:
    """In this process, in the graph's order (valid: every job after its dependencies)."""

    def run(self, jobs: list[Job], work: Work, progress: Progress) -> None:
        for job in jobs:
            progress.started(job)
            progress.finished(job, work(job, None))


# -- ray ------------------------------------------------------------------------------------
def job_resources(cfg: Config, job: Job, gpus: bool, node_cpus: int = 1) -> dict[str, float]:
    """What one job asks of the cluster: GPU share by kind (and family), CPUs by kind. A fused
    generator group on CPUs is the critical path of its iteration (what follows waits for
    it), so by default it asks for a thread per instance, up to one node's CPUs."""
    r = cfg.resources
    cpus = r.cpus
    if job.kind == GENERATOR:
        if r.generator_cpus is not None:
            cpus = r.generator_cpus
        elif not gpus:  # on a GPU one thread launches the kernels of the whole group
            cpus = max(r.cpus, min(len(job.generators), node_cpus))
    out: dict[str, float] = {"num_cpus": cpus}
    if gpus:
        share = {GENERATOR: r.generator_gpus, CLASSIFIER: r.classifier_gpus,
                 EVALUATION: r.evaluation_gpus}[job.kind]
        if share is None:  # a small DCGAN shares a GPU; a StyleGAN2 fills one alone
            share = 1.0 if cfg.gan.family == "stylegan2" else 0.25
        out["num_gpus"] = share
    return out


def _task(work: Work, threads: int, job: Job) -> dict:
    """A job in a Ray worker: torch threads = its CPU share; the GPUs Ray gave it, if any."""
    import ray
    import torch
    torch.set_num_threads(threads)
    ids = [str(i) for i in ray.get_gpu_ids()]
    if ids:  # exactly these, whatever the worker's environment said (Ray sets it by default)
        if torch.cuda.is_initialized():  # a reused worker: its CUDA is bound to other GPUs
            raise RuntimeError("a GPU job reached a worker whose CUDA is already initialised")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    device = "cuda" if ids else "cpu"
    return {**work(job, device), "host": socket.gethostname(), "pid": os.getpid(),
            "threads": torch.get_num_threads(), "device": device, "gpu_ids": ids,
            "nice": os.nice(0)}


def _gpu_task(work: Work, threads: int, job: Job) -> dict:
    """`_task` for a job with a GPU share, in a fresh worker (max_calls=1, set where Ray wraps
    it: `.options()` cannot): a reused worker keeps the CUDA context of the GPU it had first,
    so it would train there, not on the GPU Ray assigned this time."""
    return _task(work, threads, job)


def start_ray(address: str | None = None, **local: float) -> None:
    """Join the Ray cluster at `address`, or start one of this machine alone (`local`: ray.init's
    num_cpus / num_gpus; default all of the machine's). Ray nices its workers to 15, below the
    driver and anything else running; the cluster started here runs them at the driver's
    niceness (one started by `ray start` takes RAY_worker_niceness=0 from its environment)."""
    import ray
    if ray.is_initialized():
        return
    opts: dict = {"include_dashboard": False, "logging_level": "ERROR"}
    if address is None:
        opts.update(local, _system_config={"worker_niceness": os.nice(0)})
    try:
        ray.init(address=address, **opts)
    except ConnectionError as e:
        raise UserError(f"--address {address}: no Ray cluster there ({e})") from None


def cluster_gpus(address: str | None = None) -> float:
    """The GPUs of the Ray cluster at `address` (joined, or started: see `start_ray`)."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'gangaps[ray]' "
                        "(on the driver and on every node)") from None
    start_ray(address)
    return ray.cluster_resources().get("GPU", 0)


def _worker_env() -> dict[str, str]:
    """The driver's gangaps settings, and its PYTHONPATH (a source checkout on a shared
    filesystem), for every worker; anything else a worker needs is installed on its node."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("GANGAPS_")}
    if os.environ.get("PYTHONPATH"):
        keep["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return keep


class RayExecutor:
    """Each job a Ray task, submitted once its dependencies are done."""

    def __init__(self, cfg: Config, address: str | None = None) -> None:
        n_gpus = cluster_gpus(address)
        import ray
        self.cfg, self.ray = cfg, ray
        if cfg.device.startswith("cuda") and not n_gpus:
            raise UserError(f"device={cfg.device} but the Ray cluster has no GPU")
        self.gpus = n_gpus > 0 and cfg.device != "cpu"
        self.node_cpus = max((int(n["Resources"].get("CPU", 1)) for n in ray.nodes()
                              if n.get("Alive")), default=1)

    def run(self, jobs: list[Job], work: Work, progress: Progress) -> None:
        ray = self.ray
        tasks = {False: ray.remote(_task), True: ray.remote(max_calls=1)(_gpu_task)}
        env = {"env_vars": _worker_env()}
        waiting = {j.key: j for j in jobs}  # deps outside `jobs` are done already
        order = {j.key: i for i, j in enumerate(jobs)}
        done: set[str] = set()
        flight: dict = {}  # ObjectRef -> Job
        try:
            while waiting or flight:
                ready = [j for j in waiting.values()
                         if all(d in done or d not in order for d in j.deps)]
                # the critical path first: generators, then what they wait for
                ready.sort(key=lambda j: (j.kind != GENERATOR, j.kind != CLASSIFIER,
                                          order[j.key]))
                for job in ready:
                    res = job_resources(self.cfg, job, self.gpus, self.node_cpus)
                    task = tasks[res.get("num_gpus", 0) > 0]
                    ref = task.options(**res, max_retries=self.cfg.resources.max_retries,
                                       retry_exceptions=False, runtime_env=env,
                                       name=job.key).remote(work, max(1, int(res["num_cpus"])),
                                                            job)
                    flight[ref] = waiting.pop(job.key)
                    progress.started(job)
                if not flight:
                    raise AssertionError(f"jobs wait for nothing that runs: {sorted(waiting)}")
                finished, _ = ray.wait(list(flight), num_returns=1)
                for ref in finished:
                    job = flight.pop(ref)
                    progress.finished(job, self._result(job, ref))
                    done.add(job.key)
        finally:  # a failed job stops the run; the others resume from their checkpoints
            for ref in flight:
                ray.cancel(ref, force=True)

    def _result(self, job: Job, ref) -> dict:
        exc = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exc.RayTaskError as e:  # the job's own error: not retried
            cause = e.cause if isinstance(e.cause, BaseException) else None
            if isinstance(cause, UserError):
                raise UserError(f"{job.label}: {cause}") from None
            what = f"{type(cause).__name__}: {cause}" if cause else str(e).splitlines()[0]
            raise UserError(f"{job.label} failed: {what.splitlines()[0]} (traceback in the "
                            "Ray worker's log)") from None
        except (exc.WorkerCrashedError, exc.NodeDiedError, exc.ObjectLostError) as e:
            raise UserError(f"{job.label}: its worker died {self.cfg.resources.max_retries + 1} "
                            f"times ({type(e).__name__}); run the same command to resume") from None


def make_executor(name: str, cfg: Config, address: str | None):
    if name == "local":
        if address:
            raise UserError("--address is for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(cfg, address)
    raise UserError(f"--executor {name!r}: expected local or ray")
