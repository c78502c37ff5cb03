"""Every notebook in analysis/ runs, top to bottom: the analysis ones on a small results table,
the quickstart on a run it makes itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
NOTEBOOKS = sorted(ANALYSIS.glob("*.ipynb"))


def small_results() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    arms = [
        ("real_only", 0.0, 80),
        ("augmented", 1.0, 84),
        ("augmented", 2.0, 86),
        ("synthetic_only", 0.0, 70),
    ]
    for arm, ratio, level in arms:
        for seed in range(3):
            base = {"task": "classify", "arm": arm, "ratio": ratio, "shots": 10, "seed": seed}
            rows.append({**base, "metric": "top1", "label": "", "value": level + rng.normal()})
            for k, name in enumerate(("ant", "bee", "cat", "dog")):
                value = level + 3 * k + rng.normal()
                rows.append({**base, "metric": "class_accuracy", "label": name, "value": value})
            for node in ("insect.n.01", "mammal.n.01"):
                rows.append(
                    {
                        **base,
                        "metric": "node_accuracy",
                        "label": node,
                        "value": level + rng.normal(),
                    }
                )
    return pd.DataFrame(rows)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3 and ANALYSIS / "quickstart.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    results = tmp_path / "results.parquet"
    small_results().to_parquet(results)
    monkeypatch.setenv("AUGMENT_RESULTS", str(results))
    monkeypatch.setenv("AUGMENT_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("AUGMENT_OUT", str(tmp_path / "out"))  # quickstart's run and bench
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ANALYSIS)}},
    ).execute()
    assert list((tmp_path / "figures").glob("*.png"))
