"""The novel-concept experiment at its smallest: every arm trains and is scored, the fine-tunes
learn from each seed's own real nines, and the figures reach summary.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from augment.digits import personalise
from augment.generate.pipelines import read_adapter_card
from tests.conftest import cli


def test_quick_personalise_scores_every_arm_and_reports(tmp_path: Path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"gain": {"mean": 3.0}}))
    # Fresh seeds (3 and 4), as a replication of the default run's seeds 0 to 4 would ask.
    code, out, err = cli(
        capsys, "demo", "--personalise", "--quick", "--first-seed", "3", "--out", tmp_path
    )
    assert code == 0, err
    seeds = [3, 4]

    root = tmp_path / "personalise"
    results = pd.read_parquet(root / "results.parquet")
    size = personalise.QUICK
    assert set(results["arm"]) == set(personalise.ARMS)
    assert all(sorted(set(group)) == seeds for _, group in results.groupby("arm")["seed"])
    held = results[(results["metric"] == "class_accuracy") & (results["label"] == "nine")]
    assert len(held) == len(personalise.ARMS) * size.seeds

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gain"] == {"mean": 3.0}  # the demo's own figures are kept
    arms = summary["personalise"]["arms"]
    assert list(arms) == list(personalise.ARMS)
    assert "held_out_gain" in arms["lora"] and "held_out_gain" not in arms["real_only"]
    assert all(0 <= arms[a]["scorer_reads_held_out"] <= 1 for a in personalise.ARMS[1:])
    assert (root / "personalise.png").stat().st_size > 0
    report = (root / "report.md").read_text()
    assert "| lora |" in report and "2 seeds (3 to 4)" in report
    assert "the 300 held-out test digits" in report
    assert "lora" in out and "real only" in out

    # Each seed's adapter learnt from that seed's own 10 real nines, and no other image.
    from augment.bench.classify import few_shot
    from augment.digits.data import real_digits

    for seed in seeds:
        card = read_adapter_card(root / "adapters" / f"lora-seed{seed}")
        drawn = few_shot(real_digits(32).pool, size.shots, seed)
        nines = [i for i, label in zip(drawn.ids, drawn.labels, strict=True) if label == 9]
        assert [image["id"] for image in card["concepts"][0]["images"]] == nines


def test_seed_options_are_refused_where_they_size_nothing(tmp_path: Path, capsys):
    code, _, err = cli(capsys, "demo", "--seeds", "3", "--out", tmp_path)
    assert code == 2 and "--personalise" in err
    code, _, err = cli(capsys, "demo", "--personalise", "--seeds", "0", "--out", tmp_path)
    assert code == 2 and "seeds must be at least 1" in err
    code, _, err = cli(capsys, "demo", "--personalise", "--model", "m", "--out", tmp_path)
    assert code == 2 and "drop model (--model) or personalise" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written
