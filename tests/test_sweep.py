"""`augment bench sweep`: settings chosen on the validation split, the test split never read."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import augment as ag
from augment.bench.classify import ClassifySettings, evaluation_set
from augment.bench.data import load_real
from augment.errors import AugmentError
from tests.conftest import images_by_item

REPO = Path(__file__).resolve().parent.parent


def test_sweep_chooses_each_setting_on_validation_and_never_scores_test(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = {
        "guidance": [1.0, 2.0],
        "min_concept_score": [0.0, 0.9],
        "ratios": [0.5, 1.0],
        "steps": [15, 30],
    }
    report = ag.sweep(
        REPO / "jobs" / "demo.yaml",
        out=out,
        shots=3,
        seeds=2,
        images_per_concept=4,
        workers=1,  # tiny models: starting worker processes would cost more than they save
        **grid,
    )
    assert report["evaluated_on"] == "validation" and report["validation_images"] == 200
    table = pd.DataFrame(report["table"])
    assert table["stage"].value_counts().to_dict() == {"steps": 2, "generation": 4, "ratio": 2}
    chosen = report["chosen"]
    steps_rows = table[table["stage"] == "steps"]
    assert chosen["steps"] == steps_rows.loc[steps_rows["top1"].idxmax(), "steps"]
    generation = table[table["stage"] == "generation"]
    assert (generation["steps"] == chosen["steps"]).all() and (generation["ratio"] == 1.0).all()
    top = generation.loc[generation["top1"].idxmax()]
    assert (chosen["guidance"], chosen["min_concept_score"]) == (
        top["guidance"],
        top["min_concept_score"],
    )
    assert chosen["ratio"] in grid["ratios"]
    assert chosen["images_per_class"] == math.ceil(chosen["ratio"] * 3)
    assert generation["gain"].notna().all() and (generation["seeds"] == 2).all()
    # Every classifier was scored on the 200 validation images, none on the 300 test ones.
    for results in (out / "runs").glob("*/results.parquet"):
        scored = pd.read_parquet(results)
        assert set(scored["evaluated_on"]) == {"validation"}
        assert set(scored["n_test"]) == {200}
    renders = sorted(p.name for p in (out / "renders").iterdir())
    assert renders == ["guidance-1", "guidance-2"]
    assert "Chosen on the validation split" in (out / "sweep.md").read_text()
    assert len(pd.read_csv(out / "sweep.csv")) == 8
    # A report names the sweep that chose its settings.
    report_md = ag.report(
        out / "runs" / "real-only-15",
        tmp_path / "report",
        sweep=out,  # its folder will do
    )
    text = report_md.read_text()
    assert "## Settings chosen on validation" in text and "| generation | " in text
    # a sweep's own run was scored on validation: the report says so, and claims no test figure
    assert "top-1 on the real validation split (settings are chosen there" in text
    assert "held-out real test" not in text and "test figures" not in text


def test_validation_is_held_out_from_the_pool_and_the_test_split():
    real = load_real("digits", 16)
    assert len(real.validation) == 200 and len(real.test) == 300
    ids = [set(real.pool.ids), set(real.validation.ids), set(real.test.ids)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert np.bincount(real.validation.labels, minlength=10).tolist() == [20] * 10
    chosen = evaluation_set(real, ClassifySettings(evaluate_on="validation"))
    assert chosen is real.validation
    assert evaluation_set(real, ClassifySettings()) is real.test


def test_a_sweep_without_a_validation_split_or_with_bad_values_stops_before_rendering(tmp_path):
    real = load_real("digits", 16)
    real.validation = None
    with pytest.raises(AugmentError, match="has no validation split to choose settings on"):
        evaluation_set(real, ClassifySettings(evaluate_on="validation"))
    with pytest.raises(AugmentError, match="test or validation"):
        ClassifySettings(evaluate_on="train")
    job = REPO / "jobs" / "demo.yaml"
    for bad, message in (
        ({"min_concept_score": [1.5]}, "between 0 and 1"),
        ({"guidance": [0.5]}, "1 or more"),
        ({"seeds": 1}, "seeds 1: 2 or more"),
        ({"ratios": []}, "at least one value"),
        ({"ratios": [1.0, math.inf]}, r"ratios \[1.0, inf\]: finite and above 0"),
        ({"ratios": [math.nan]}, "finite and above 0"),
        ({"guidance": [1.0, math.nan]}, "finite, 1 or more"),
        ({"guidance": [math.inf]}, "finite, 1 or more"),
        ({"guidance": [2.0, 2.0000001]}, r"two values read as 2 .* share one render folder"),
        ({"min_concept_score": [0.5, 0.5]}, r"min_concept_score \[0.5, 0.5\]: two values read"),
    ):
        with pytest.raises(AugmentError, match=message):
            ag.sweep(job, out=tmp_path / "bad", **bad)
    assert not (tmp_path / "bad").exists()


def test_renders_resume_whatever_the_jobs_minimum_and_a_changed_job_stops_before_training(
    tmp_path,
):
    """The sweep chooses the minimum concept score itself, on renders it flags again: the
    job's own minimum must not refuse them (it did, after stage 1 had trained, advising a
    --force the command has not got). A job changed otherwise is refused before training."""
    demo = (REPO / "jobs" / "demo.yaml").read_text()
    job_text = demo[: demo.index("segment:")] + demo[demo.index("output:") :]  # renders only
    job_text = job_text.replace("images_per_concept: 340", "images_per_concept: 1")
    job = tmp_path / "job.yaml"
    job.write_text(job_text)
    out = tmp_path / "sweep"
    rendered = out / "renders" / "guidance-1"
    ag.run(job, out=rendered, distributor="local")  # as an earlier sweep made it: minimum 0.5
    images = images_by_item(rendered)
    job.write_text(job_text.replace("min_concept_score: 0.5 ", "min_concept_score: 0.99 "))
    grid = {"guidance": [1.0], "min_concept_score": [0.0, 0.9], "ratios": [1.0], "steps": [10]}
    report = ag.sweep(job, out=out, shots=2, seeds=2, workers=1, **grid)
    assert report["chosen"]["guidance"] == 1.0
    assert images_by_item(rendered) == images  # resumed, nothing rendered anew
    assert ag.load_spec(rendered / "job.yaml").filters.min_concept_score == 0.5  # as it was
    fresh = tmp_path / "fresh"
    ag.sweep(job, out=fresh, shots=2, seeds=2, workers=1, **{**grid, "min_concept_score": 0.9})
    assert (
        ag.load_spec(fresh / "renders" / "guidance-1" / "job.yaml").filters.min_concept_score == 0
    )

    job.write_text(job_text.replace("num_inference_steps: 25", "num_inference_steps: 20"))
    again = tmp_path / "again"
    shutil.copytree(out / "renders", again / "renders")
    with pytest.raises(AugmentError) as refused:
        ag.sweep(job, out=again, shots=2, seeds=2, workers=1, **grid)
    message = str(refused.value)
    assert "holds a run of a different spec" in message and "num_inference_steps 25 then" in message
    assert "use another --out, or move that folder away" in message and "--force" not in message
    assert not (again / "runs").exists()  # no classifier trained


def test_the_demo_runs_the_settings_its_shipped_sweep_chose():
    """The full demo's report shows augment/digits/sweep.json as the sweep that chose its
    settings: they must be the settings it runs."""
    from augment.digits.demo import DEMO_JOB, FULL, SWEEP

    shipped = json.loads(SWEEP.read_text())
    chosen = shipped["chosen"]
    spec = ag.load_spec(DEMO_JOB)
    assert shipped["evaluated_on"] == "validation" and shipped["validation_images"] == 200
    assert spec.generation.guidance_scale == chosen["guidance"]
    assert spec.filters.min_concept_score == chosen["min_concept_score"]
    assert FULL.steps == chosen["steps"] and max(FULL.ratios) == chosen["ratio"]
    assert FULL.images_per_concept >= chosen["images_per_class"]


def test_a_report_names_what_differs_from_the_sweeps_fixed_settings():
    """A benchmark at 5 shots and 32 px was reported "scored with the chosen settings" beside a
    sweep at 3 shots and 16 px: only steps and the ratio were compared."""
    from augment.reporting import settings_not_chosen

    chosen = {"steps": 600, "ratio": 30.0, "guidance": 1.0, "min_concept_score": 0.5}
    swept = {"shots": 3, "image_size": 16, "real": "digits"}
    same = {"steps": 600, "ratios": [30.0], "shots": [3], "image_size": 16, "real": "digits"}
    assert settings_not_chosen(chosen, same, None, swept) == []
    other = {**same, "shots": [5], "image_size": 32, "real": "photos"}
    assert settings_not_chosen(chosen, other, None, swept) == [
        "5 shots, not 3",
        "32 px images, not 16",
        "real set photos, not digits",
    ]


def test_a_sweep_row_says_the_ratio_an_arm_trained_at_when_the_filter_left_it_short():
    """A filter minimum that left the synthetic set short competed at fewer images, under the
    ratio asked (×2 where it trained ×1.9), and the sweep's table did not say so."""
    from augment.bench.sweep import sweep_lines, trained

    results = pd.DataFrame(
        {
            "arm": ["augmented", "augmented"],
            "metric": ["top1", "top1"],
            "label": ["", ""],
            "seed": [0, 1],
            "value": [90.0, 91.0],
            "ratio_trained": [1.9, 1.9],
            "synthetic_short": [True, True],
        }
    )
    assert trained(results) == {"ratio_trained": 1.9}
    assert trained(results.assign(synthetic_short=False, ratio_trained=2.0)) == {}
    row = {"stage": "generation", "steps": 600, "ratio": 2.0, "top1": 90.5, "ci_low": 84.1}
    row |= {"ci_high": 96.9, **trained(results)}
    report = {
        "chosen": {
            "steps": 600,
            "guidance": 1.0,
            "min_concept_score": 0.9,
            "ratio": 2.0,
            "images_per_class": 20,
        },
        "settings": {"shots": 10, "seeds": 2},
        "validation_images": 200,
        "table": [row],
    }
    assert "| ×2 (trained ×1.9) |" in "\n".join(sweep_lines(report))
