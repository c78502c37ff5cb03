"""`augment demo --quick`: the whole mission on the shipped digits model, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_quick_demo_writes_the_report_and_headline_figures(tmp_path):
    result = run_cli("demo", "--quick", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    accuracy = summary["accuracy_percent"]
    assert set(accuracy) == {"real_only", "augmented", "oracle"}
    assert summary["oracle_gain"]["ratio"] == 2.0  # 20 more real digits a class: the pool's
    for figure in accuracy.values():
        assert figure["n_seeds"] == 3 and figure["ci_low"] <= figure["mean"] <= figure["ci_high"]
    assert summary["gain"]["ci_low"] <= summary["gain"]["mean"] <= summary["gain"]["ci_high"]
    assert set(summary["detector_map50_95"]) == {"real_only", "augmented ×1"}
    gain = summary["detector_gain"]  # paired by seed, like the classifier's
    assert gain["n_pairs"] == 2 and gain["ci_low"] <= gain["mean"] <= gain["ci_high"]
    assert "detector box gain (augmented - real-only)" in result.stdout
    assert summary["images_generated"] == 240
    # Every class still fills the x2 arm after the filter: it trained on the ratio it says.
    assert accuracy["augmented"]["ratio_trained"] == accuracy["augmented"]["ratio"] == 2.0
    generation, whole = summary["stage_seconds"]["generation"], summary["wall_time_s"]
    assert f"240 images generated in {generation:.0f} s; the whole demo took {whole:.0f} s" in (
        result.stdout
    )
    # One detector epoch learns nothing: the demo says so rather than printing two zeros.
    if summary["detector_map50_95"]["real_only"]["mean"] == 0:
        assert "detector arm real_only: mAP50:95 0.0 in every seed" in result.stderr
    report = Path(summary["report"]).read_text()
    assert "Paired gain" in report and "samples.png" in report
    # scored on the test canvases, which no choice of its settings looked at, and said so
    assert "paired by seed, on the held-out real test split" in report
    assert summary["detector_evaluated_on"] == "test"
    # The report says which images were trained on: the filter's count is the manifest's.
    filtered = json.loads((tmp_path / "demo" / "manifest.json").read_text())["counts"]["filtered"]
    assert f"{filtered} filtered by `builtin:digits-scorer` under a concept score of 0.5" in report
    assert "report:" in result.stdout and "summary.json" in result.stdout
    # Per-concept quality (fidelity, diversity, KID against the real pool) and the gallery.
    assert "## Synthetic images per concept, worst first" in report
    assert "KID x1000" in report and "concept_quality.png" in report
    index = Path(summary["gallery"]).read_text()
    assert index.count('href="concept-') == 10 and "fidelity" in index
    assert summary["duplicates"] == manifest_counts(tmp_path / "demo")["duplicate"]


def manifest_counts(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["counts"]
