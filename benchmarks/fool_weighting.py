"""Fool weightings side by side: iteration-1 generators against a run's frozen C_0.

For each setting (config overrides of `experiment.fool_*`), trains generators with fresh seeds
against one iteration-0 classifier of a finished run and prints their FID(LeNet), mode coverage
and the balanced accuracy of every iteration-0 classifier on them (0.5 = fooled). This is the
measurement behind the demo's fool weighting (docs/findings-mnist.md):

    gangaps run src/gangaps/configs/demo.yaml experiment.iterations=1 --out runs/it0 --data-root DATA
    python benchmarks/fool_weighting.py --run runs/it0 --data-root DATA
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from gangaps.data import load_real
from gangaps.experiment.evaluate import QualityMeter
from gangaps.experiment.store import RunStore
from gangaps.generators import generate, load_generator
from gangaps.metrics.detection import detection_metrics
from gangaps.train.classifier import FINAL, classify, load_classifier
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator

SETTINGS = {
    "fixed λ=1": ["experiment.fool_lambda=1"],
    "fixed λ=0.3": ["experiment.fool_lambda=0.3"],
    "fixed λ=1, start 0.5, ramp 0.25": ["experiment.fool_lambda=1", "experiment.fool_start=0.5",
                                        "experiment.fool_ramp=0.25"],
    "adaptive λ=1, start 0.5": ["experiment.fool_lambda=1", "experiment.fool_weighting=adaptive",
                                "experiment.fool_start=0.5"],
    "adaptive λ=3, start 0.5": ["experiment.fool_lambda=3", "experiment.fool_weighting=adaptive",
                                "experiment.fool_start=0.5"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run with a finished iteration 0")
    p.add_argument("--data-root", required=True)
    p.add_argument("--target", help="classifier id to fool (default: the config's first target)")
    p.add_argument("--seeds", default="11,12", help="generator seeds per setting")
    p.add_argument("--only", help="comma-separated setting names")
    p.add_argument("--work", default="runs/fool_weighting")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(1)
    from gangaps.config import load_config
    store = RunStore(args.run)
    base = store.load_config()
    cpu = torch.device("cpu")
    clf_ids = sorted(d.name for d in store.iteration_dir(0).glob("clf_*"))
    target = args.target or next(f"clf_{c.arch}_{c.seeds[0]}" for c in base.classifiers
                                 if c.role == "target")
    names = args.only.split(",") if args.only else list(SETTINGS)
    rows = []
    for name in names:
        cfg = load_config(store.config_path, [f"data.path={args.data_root}", *SETTINGS[name]])
        real = load_real(cfg.data)
        real.eval_real = real.eval_real[:cfg.evaluation.n_real]
        meter = QualityMeter(cfg, real, cpu)
        clfs = {c: load_classifier(store.classifier_dir(0, c) / FINAL) for c in clf_ids}
        real_logits = {c: classify(m, real.eval_real, cpu) for c, m in clfs.items()}
        for seed in map(int, args.seeds.split(",")):
            out = Path(args.work) / f"{name}_{seed}".replace(" ", "").replace(",", "_")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            job = GeneratorJob(out, seed, [load_classifier(store.classifier_dir(0, target) / FINAL)])
            train_generator(job, cfg, real.gan_train, cpu, progress=False)
            fake = generate(load_generator(out / CHECKPOINT), cfg.evaluation.n_fake, seed=0)
            q = meter(fake)
            acc = {c: detection_metrics(real_logits[c], classify(m, fake, cpu))["accuracy"]
                   for c, m in clfs.items()}
            rows.append({"setting": name, "seed": seed, "fid_lenet": q["fid_lenet"],
                         "mode_coverage": q["mode_coverage"], "seconds": time.perf_counter() - t0,
                         **{f"acc_{c}": a for c, a in acc.items()}})
            print(f"{name:34s} seed {seed}: FID {q['fid_lenet']:6.1f}  classes {q['mode_coverage']:2d}  "
                  + "  ".join(f"{c} {a:.2f}" for c, a in acc.items())
                  + f"  ({rows[-1]['seconds']:.0f}s, target {target})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
