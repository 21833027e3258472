"""Crash injection: a demo-size run SIGKILLed at seeded moments (generator training, checkpoint
writes, classifier training, evaluation, report) resumes to the uninterrupted run's results,
and never redoes a finished job. The 20-kill version: benchmarks/crash_injection.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import robustness as rb


@pytest.fixture
def reference(tiny_reference: Path) -> Path:
    return tiny_reference


def test_the_schedule_covers_every_stage():
    stages = {stage for stage, _ in rb.schedule(20, seed=0)}
    assert {"generator training", "checkpoint write", "classifier training", "evaluation",
            "report"} <= stages


def test_killed_run_resumes_to_identical_results(reference, tmp_path):
    # one moment per stage, in run order: mid-training of G, inside a checkpoint write of a
    # generator of iteration 1 (after iteration 0 finished), classifier training, evaluation,
    # and the report's last file
    plan = [("generator training", "iter_00/gen_01/log.jsonl:4"),
            ("checkpoint write", "iter_01/gen_00/checkpoint.safetensors:2"),
            ("classifier training", "iter_01/clf_small_cnn_1/log.jsonl:1"),
            ("evaluation", "/eval/c01_:3"),
            ("report", "report/index.html:1")]
    out = tmp_path / "killed"
    rows = rb.kill_and_resume(out, plan)
    assert [r["rc"] for r in rows] == [-9] * len(plan)
    assert len(rb.records(reference)) > 20
    assert rb.records(out) == rb.records(reference)


def test_a_killed_group_resumes_to_the_uninterrupted_groups_results(tmp_path):
    """Fused groups of two (both instances of an iteration): killed inside the group's
    checkpoint write, mid-training, and between its members' DONE markers."""
    group = ("gan.group_size=2",)
    reference = tmp_path / "reference"
    assert rb.run(reference, *group).returncode == 0
    assert not (reference / "iter_00" / "group_00-01").exists()  # removed when both are done
    plan = [("checkpoint write", "iter_00/group_00-01/checkpoint.safetensors:2"),
            ("generator training", "iter_01/gen_01/log.jsonl:3"),
            ("DONE write", "iter_01/gen_01/DONE:1")]  # gen_00 is done, gen_01 not yet
    out = tmp_path / "killed"
    rb.kill_and_resume(out, plan, extra=group)  # also: the finished gen_00 is not redone
    assert rb.records(out) == rb.records(reference)
    assert not (out / "iter_01" / "group_00-01").exists()
