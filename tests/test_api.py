"""The Python front door: `import augment as ag` offers every stage, specs may be dicts, and
errors are the project's own, with the messages the CLI prints."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import augment as ag
from augment.cli import main
from augment.errors import AugmentError, ModelError, SpecError
from tests.conftest import REPO, TINY_JOB


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, Path]:
    """The tiny job as a dict (as a notebook builds it), run here with the local distributor."""
    folder = tmp_path_factory.mktemp("api")
    data = yaml.safe_load(TINY_JOB.replace("OUT_DIR", str(folder / "unused")))
    result = ag.run(ag.load_spec(data, {"limit": 5}), out=folder / "out", distributor="local")
    assert (result.planned, result.rendered, result.failed) == (5, 5, 0)
    return data, result.out_dir


def test_a_dict_spec_runs_and_reads_back(tiny_run):
    data, out = tiny_run
    frame = ag.read(out)
    assert len(frame) == 5 and out == Path(out)
    image = frame.image[0].open()
    assert image.size == (32, 32)
    assert frame.image[0]._repr_png_().startswith(b"\x89PNG")
    # A frame cut down in a notebook saves as the shards hold it (it raised ArrowInvalid).
    path = out.parent / "kept.parquet"
    frame[frame.concept_name == "zero"].to_parquet(path)
    again = pd.read_parquet(path)
    assert again.image.iloc[0]["bytes"] == frame[frame.concept_name == "zero"].image.iloc[0].data
    dataset = ag.read(out, as_dataset=True)
    assert len(dataset) == 5 and dataset[0]["image"].size == (32, 32)
    assert sorted(dataset["item_id"]) == sorted(frame["item_id"])


def test_a_dict_and_its_yaml_file_plan_the_same_items(tiny_run, tmp_path):
    data, _ = tiny_run
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    from_dict, from_file = ag.plan(data), ag.plan(path)
    assert len(from_dict) == 9
    assert from_dict["item_id"].tolist() == from_file["item_id"].tolist()
    assert [p.text for p in ag.prompts(data)] == from_dict["prompt"].tolist()
    assert [c.name for c in ag.concepts(data)] == ["zero", "one", "two"]
    # Paths as a notebook builds them, in the dict or an override, name what strings do.
    as_paths = {**data, "output": {"dir": tmp_path / "o"}}
    as_paths["taxonomy"] = {**data["taxonomy"], "source": REPO / "augment/taxonomies/digits.yaml"}
    spec = ag.load_spec(as_paths, {"generation.model": REPO / "augment/digits/model"})
    assert (spec.output.dir, spec.generation.model) == (
        str(tmp_path / "o"),
        str(REPO / "augment/digits/model"),
    )
    assert [c.name for c in ag.concepts(spec)] == ["zero", "one", "two"]
    # A setting changed in code is checked as the YAML is, in the project's one line.
    spec.output.dir = tmp_path / "p"
    assert spec.output.dir == str(tmp_path / "p")
    with pytest.raises(SpecError, match="^num_inference_steps: input should be a valid integer"):
        spec.generation.num_inference_steps = "abc"
    assert len(ag.concepts(source="digits")) == 10
    assert [c.id for c in ag.concepts(source="augment/taxonomies/weeds.yaml", max_concepts=2)] == [
        c.id for c in ag.concepts(source="weeds")[:2]
    ]


def test_export_and_rerun_through_the_api(tiny_run, monkeypatch):
    data, out = tiny_run
    paths = ag.export(out, "imagefolder")  # one name, or a list of them
    assert len(list(paths["imagefolder"].rglob("*.png"))) == 5
    from augment import distribute

    def no_worker(*_, **__):
        raise AssertionError("a finished run started a worker")

    monkeypatch.setitem(distribute.DISTRIBUTORS, "ray", no_worker)  # nor a Ray
    again = ag.run(ag.load_spec(data, {"limit": 5}), out=out, distributor="ray")
    assert (again.rendered, again.skipped) == (0, 5)


def test_a_smaller_limit_over_a_run_keeps_what_it_planned(tiny_run):
    """--limit 2 over a run of 5 renders nothing and leaves OUT's plan and manifest whole."""
    data, out = tiny_run
    before = ag.plan(data)  # the whole job's order
    smaller = ag.run(ag.load_spec(data, {"limit": 2}), out=out, distributor="local")
    assert (smaller.planned, smaller.rendered, smaller.skipped) == (5, 0, 5)
    kept = pd.read_parquet(out / "plan.parquet")["item_id"].tolist()
    assert kept == [i for i in before["item_id"] if i in set(kept)] and len(kept) == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["counts"]["planned"], manifest["counts"]["missing"]) == (5, 0)


def test_errors_are_the_projects_own_with_the_clis_message(tmp_path, capsys):
    bad = yaml.safe_load(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    bad["generation"]["model"] = "models/nowhere"
    with pytest.raises(ModelError) as raised:
        ag.run(bad, distributor="local")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["run", str(path), "--distributor", "local"]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed == f"error: {raised.value}"
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match=r"<spec>: generation.num_inference_steps: must be >= 1"):
        ag.load_spec({**bad, "generation": {**bad["generation"], "num_inference_steps": 0}})
    with pytest.raises(SpecError, match="a job spec is a YAML file's path, a dict or a JobSpec"):
        ag.load_spec(None)
    with pytest.raises(
        AugmentError, match=r"^workers must be a whole number at least 1, got '2' \("
    ):
        ag.run(bad, distributor="local", workers="2")  # a notebook's string is not a number


def test_a_notebooks_wrong_types_are_named_and_never_cost_a_run(tiny_run, tmp_path):
    """A string where a flag goes ("false" is true to Python: it deleted the run), None or ""
    where a path goes (the current folder), a scalar where a list goes."""
    data, out = tiny_run
    before = sorted(ag.read(out).item_id)
    other = {**data, "seed": 8}  # another spec: only force would replace the run
    with pytest.raises(AugmentError, match="^force must be True or False, got 'false'$"):
        ag.run(other, out=out, distributor="local", force="false")
    assert sorted(ag.read(out).item_id) == before
    for call, message in [
        (lambda: ag.read(None), r"out: give a path \(a str or a Path\), got None"),
        (lambda: ag.run(data, out="", distributor="local"), "out: give a path .*, got ''"),
        (lambda: ag.export(out, None), "formats: a name or a list of names"),
        (lambda: ag.export(out, "coco", include_flagged="no"), "include_flagged must be True"),
        (lambda: ag.classify(steps=1.5), "steps must be a whole number at least 1, got 1.5"),
        (lambda: ag.classify(test_fraction="0.3"), "test_fraction must be a number between 0"),
        (lambda: ag.classify(real=5), r"real: give a path \(a str or a Path\), got 5"),
        (lambda: ag.refilter(out, real=5), r"real: give a path \(a str or a Path\), got 5"),
        (lambda: ag.classify(out=out / "job.yaml"), "job.yaml is a file; give a folder"),
        (lambda: ag.report(out, synthetic=5), r"synthetic: give a path .*, got 5"),
        (lambda: ag.report(out, sweep=5), r"sweep: give a path .*, got 5"),
        # personalise="no" ran the novel-concept experiment; quick="yes" the quick demo
        (lambda: ag.demo(tmp_path / "d", quick="yes"), "^quick must be True or False"),
        (lambda: ag.demo(tmp_path / "d", personalise="no"), "^personalise must be True or"),
        (lambda: ag.demo(None), r"out: give a path .*, got None"),
        (lambda: ag.concepts(source=123), "source: give a taxonomy source such as"),
        (lambda: ag.submit(data, 123), "address: give the Ray cluster's address as text"),
        (lambda: ag.plan(data, output=123), r"output: give a path .*, got 123"),
        (lambda: ag.plan(data, output=""), r"output: give a path .*, got ''"),
        (lambda: ag.load_spec(data, [("seed", 3)]), "overrides are a dict of dotted keys"),
    ]:
        with pytest.raises(AugmentError, match=message):
            call()
    assert not (tmp_path / "d").exists()
    from augment.bench.classify import ClassifySettings

    assert ClassifySettings(shots=5, ratios=2).shots == [5]  # one value for a list of one


def test_refilter_takes_the_real_pool_as_a_path(tiny_run, tmp_path):
    """A Path crashed the manifest's JSON after the shards were rewritten, leaving the
    manifest and exports behind the flags."""
    import shutil

    _, out = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    ag.refilter(copy, real=Path("digits"))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["filters"]["real"] == "digits"


def test_every_api_name_stays_a_function_once_every_module_is_loaded():
    """No submodule shadows a stage function of the same name (`ag.plan` is the function)."""
    for module in pkgutil.walk_packages(ag.__path__, "augment."):
        importlib.import_module(module.name)
    for name in ag.__all__:
        value = getattr(ag, name)
        assert callable(value) and not isinstance(value, type(sys)), name


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append("name: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    with pytest.raises(SpecError, match="expands to more than 100,000 values"):
        ag.load_spec(path)
    assert time.perf_counter() - started < 1.0
    cli = subprocess.run(
        [sys.executable, "-m", "augment.cli", "plan", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2
    assert cli.stderr.count("\n") == 1 and "expands to more than" in cli.stderr


def test_a_plan_is_written_only_to_a_parquet_file_of_its_own(tmp_path):
    """`augment plan job.yaml -o job.yaml` replaced the job by Parquet; a user's notes.txt and
    a path no one can write went the same way, or ended as a fault of augment."""
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    notes = tmp_path / "notes.parquet"
    notes.write_text("my notes")
    results = tmp_path / "results.parquet"  # a benchmark's table: Parquet, but no plan
    pd.DataFrame({"arm": ["real_only"], "metric": ["top1"], "value": [95.1]}).to_parquet(results)
    kept = results.read_bytes()
    for output, message in [
        (job, r"job.yaml would hold Parquet under another name; give a .parquet file, such as "),
        (notes, "notes.parquet exists and is no Parquet file, so no earlier plan"),
        (results, r"results.parquet is a Parquet file but no plan \(its columns: arm, metric, "),
        (tmp_path, "is a folder; give a file, such as"),
        ("/proc/plan.parquet", "output: cannot write /proc/plan.parquet .*choose a folder"),
    ]:
        with pytest.raises(AugmentError, match=message):
            ag.plan(job, output=output)
    assert job.read_text().startswith("name:") and notes.read_text() == "my notes"
    assert results.read_bytes() == kept
    plan = tmp_path / "plan.parquet"
    first = ag.plan(job, output=plan)
    assert ag.plan(job, output=plan).equals(first)  # an earlier plan is written again
    assert pd.read_parquet(plan)["item_id"].tolist() == first["item_id"].tolist()
