"""Every notebook in analysis/ runs, top to bottom: the analysis ones on a small results table,
the quickstart on a run it makes itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
NOTEBOOKS = sorted(ANALYSIS.glob("*.ipynb"))


def small_results(shaped_as: str = "bench") -> pd.DataFrame:
    """A small results table: as `augment bench classify` writes it (a synthetic-only arm),
    or as the demo does (no synthetic-only arm; an oracle, quality and detector rows)."""
    rng = np.random.default_rng(0)
    rows = []
    arms = [("real_only", 0.0, 80), ("augmented", 1.0, 84), ("augmented", 2.0, 86)]
    arms.append(("synthetic_only", 0.0, 70) if shaped_as == "bench" else ("oracle", 1.0, 85))
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
    if shaped_as == "demo":
        for k, name in enumerate(("ant", "bee", "cat", "dog")):
            base = {"task": "quality", "arm": "synthetic", "ratio": 0.0, "shots": 0, "seed": 0}
            rows.append({**base, "metric": "fidelity", "label": name, "value": 0.9 + k / 50})
        for arm, level in (("real_only", 60), ("augmented", 64)):
            for seed in range(3):
                base = {"task": "detect", "arm": arm, "ratio": 1.0, "shots": 0, "seed": seed}
                rows.append({**base, "metric": "map50_95", "label": "", "value": level + seed})
    frame = pd.DataFrame(rows)
    frame["evaluated_on"] = np.where(frame["task"] == "quality", None, "test")
    return frame


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3 and ANALYSIS / "quickstart.ipynb" in NOTEBOOKS


def run_notebook(path: Path, results: pd.DataFrame, tmp_path: Path, monkeypatch):
    """Execute a notebook on `results`; returns it, its outputs filled in."""
    import nbformat
    from nbclient import NotebookClient

    table = tmp_path / "results.parquet"
    results.to_parquet(table)
    monkeypatch.setenv("AUGMENT_RESULTS", str(table))
    monkeypatch.setenv("AUGMENT_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("AUGMENT_OUT", str(tmp_path / "out"))  # quickstart's run and bench
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ANALYSIS)}},
    ).execute()
    return notebook


def shown(notebook) -> tuple[str, int]:
    """A notebook's printed text, and how many images it displays."""
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    return text, images


def test_the_research_notebooks_answer_on_a_table_shaped_as_the_demos(tmp_path, monkeypatch):
    """The demo trains no synthetic-only arm: error_analysis drew an empty plot, said nothing,
    and no notebook showed a figure inline (they were saved only)."""
    notebook = run_notebook(
        ANALYSIS / "error_analysis.ipynb", small_results("demo"), tmp_path, monkeypatch
    )
    text, images = shown(notebook)
    assert "Spearman rho = " in text and "(fidelity: renders the scorer reads" in text
    assert "scored on the real test split" in text and images == 1
    notebook = run_notebook(
        ANALYSIS / "classifier_gain.ipynb", small_results("demo"), tmp_path, monkeypatch
    )
    assert shown(notebook)[1] == 4  # arms, gain vs ratio, per class, WordNet nodes


def test_the_notebooks_draw_no_conclusion_a_table_cannot_hold(tmp_path, monkeypatch):
    """One seed read "[nan, nan] -> CI includes 0"; a table without an augmented arm read "at
    the largest ratio, xnan" and asked for a synthetic-only arm it had."""
    one_seed = small_results().query("seed == 0")
    notebook = run_notebook(ANALYSIS / "classifier_gain.ipynb", one_seed, tmp_path, monkeypatch)
    text = shown(notebook)[0]
    assert "one seed only: no confidence interval, no conclusion" in text and "includes" not in text
    no_augmented = small_results().query("arm != 'augmented'")
    notebook = run_notebook(ANALYSIS / "error_analysis.ipynb", no_augmented, tmp_path, monkeypatch)
    text = shown(notebook)[0]
    assert "no augmented arm paired with real-only" in text and "xnan" not in text
    assert "(the table needs an augmented arm)" in text


def test_a_table_without_classifier_rows_is_said_to_be_one(tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    detector_only = small_results("demo").query("task == 'detect'")
    for name in ("error_analysis", "classifier_gain"):
        with pytest.raises(CellExecutionError, match="holds no classifier rows: run `augment"):
            run_notebook(ANALYSIS / f"{name}.ipynb", detector_only, tmp_path, monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch):
    notebook = run_notebook(path, small_results(), tmp_path, monkeypatch)
    assert list((tmp_path / "figures").glob("*.png"))
    assert shown(notebook)[1] >= 1  # its figures are shown, not only saved


def test_a_long_step_shows_its_progress_bar_in_a_notebook():
    """Rich's bar was off wherever stderr is not a terminal, so in Jupyter a run or a
    benchmark went minutes with nothing shown; with ipywidgets it is drawn as a widget."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook()
    code = (
        "from augment.progress import image_progress\n"
        "with image_progress(3, 'rendering') as advance:\n"
        "    advance(3)\n"
    )
    notebook.cells = [nbformat.v4.new_code_cell(code)]
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    kinds = [set(output.get("data", {})) for output in notebook.cells[0].outputs]
    assert any("application/vnd.jupyter.widget-view+json" in kind for kind in kinds)
