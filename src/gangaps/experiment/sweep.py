"""Sweeps: several runs that differ only after iteration 0 share one iteration 0.

`gangaps sweep CONFIG --fool-lambda 0.1,1,10 --fool-mode fool-all,memoryless
--target-arch small_cnn,patch` trains iteration 0 once (generators and every classifier of the
config) in `<out>/iteration0`, then one run per combination in `<out>/<variant>` that reuses it,
then a combined report (λ trade-off R1, cross-iteration matrices per fool_mode R3,
architecture transfer R4) in `<out>/report`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from gangaps.config import Config
from gangaps.errors import UserError

BASE = "iteration0"


def variant_name(mode: str, lam: float, target_arch: str | None) -> str:
    return f"{mode}_lam{lam:g}" + (f"_fool-{target_arch}" if target_arch else "")


def variant_config(base: Config, mode: str, lam: float, target_arch: str | None,
                   base_dir: Path) -> Config:
    """The base config with this variant's fool settings; with `target_arch`, only classifiers
    of that architecture keep the role 'target' (the others are held out)."""
    cfg = base.model_copy(deep=True)
    cfg.name = f"{base.name}-{variant_name(mode, lam, target_arch)}"
    cfg.experiment.fool_mode = mode
    cfg.experiment.fool_lambda = lam
    cfg.experiment.reuse_iteration0 = str(base_dir)
    if target_arch is not None:
        if not any(s.arch == target_arch and s.role == "target" for s in cfg.classifiers):
            raise UserError(f"--target-arch {target_arch}: no classifier of that arch has role "
                            "'target' in the config")
        for spec in cfg.classifiers:
            if spec.arch != target_arch and spec.role == "target":
                spec.role = "heldout"
    return cfg


def plan_sweep(base: Config, out: Path, lambdas: list[float], modes: list[str],
               target_archs: list[str | None]) -> tuple[Config, list[tuple[Path, Config]]]:
    if base.experiment.iterations < 2:
        raise UserError("a sweep needs experiment.iterations ≥ 2 (iteration 0 is shared)")
    for mode in modes:
        if mode not in ("fool-all", "memoryless", "none"):
            raise UserError(f"--fool-mode {mode!r}: expected fool-all, memoryless or none")
    if any(lam < 0 for lam in lambdas):
        raise UserError("--fool-lambda values must be ≥ 0")
    base0 = base.model_copy(deep=True)
    base0.name = f"{base.name}-iteration0"
    base0.experiment.iterations = 1
    # the control (fool_mode none) ignores λ: one run of it, whatever the λ list
    combos = dict.fromkeys((m, 0.0 if m == "none" else lam, a)
                           for m, lam, a in itertools.product(modes, lambdas, target_archs))
    variants = [(out / variant_name(m, lam, a), variant_config(base, m, lam, a, out / BASE))
                for m, lam, a in combos]
    return base0, variants


def run_sweep(base: Config, out: Path, lambdas: list[float], modes: list[str],
              target_archs: list[str | None], progress: bool = True, executor: str = "local",
              address: str | None = None) -> Path:
    from gangaps.experiment.runner import Runner, run_together
    from gangaps.report.sweep import build_sweep_report
    base0, variants = plan_sweep(base, out, lambdas, modes, target_archs)
    # open (validate, write config) every run before training anything: a bad variant fails fast
    runners = [Runner(base0, out / BASE, progress, executor, address)]
    runners += [Runner(cfg, path, progress, executor, address) for path, cfg in variants]
    runners[0].run()  # iteration 0, then every variant at once (one after another when local)
    if executor == "local":
        for runner in runners[1:]:
            runner.run()
    else:
        run_together(runners[1:], executor, address)
    return build_sweep_report(out, [path for path, _ in variants])
