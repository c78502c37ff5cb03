"""End to end on the tiny builtin model: shards, COCO, determinism, resume, refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from augment.config import load_spec
from augment.errors import ModelError, OutputError
from augment.job import RunOptions, run_job
from tests.conftest import TINY_JOB, images_by_item

LOCAL = RunOptions(distributor="local")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """One run of the tiny job, shared by the read-only checks below."""
    folder = tmp_path_factory.mktemp("run")
    job = folder / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(folder / "out")))
    result = run_job(load_spec(job), LOCAL)
    assert (result.planned, result.rendered, result.skipped) == (9, 9, 0)
    return job, folder / "out"


def test_shards_hold_one_record_per_item_with_decodable_images(tiny_run):
    _, out = tiny_run
    table = pd.read_parquet(out / "shards")
    plan = pd.read_parquet(out / "plan.parquet")
    assert sorted(table.item_id) == sorted(plan.item_id)
    assert len(list((out / "shards").glob("part-*.parquet"))) == 3  # blocks of 4, 4, 1
    row = table.iloc[0]
    assert row["mode"] == "txt2img" and row["steps"] == 3 and row["scheduler"] == "DDIM"
    assert row["model"] == "builtin:tiny-sd" and row["concept_name"] == "zero"
    for record in table.itertuples():
        image = Image.open(io.BytesIO(record.image["bytes"]))
        assert image.size == (32, 32) and image.mode == "RGB"


def test_coco_export_loads_in_pycocotools(tiny_run):
    from pycocotools.coco import COCO

    _, out = tiny_run
    coco = COCO(str(out / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 9
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["zero", "one", "two"]
    for image in coco.loadImgs(coco.getImgIds()):
        assert (out / "coco" / "images" / image["file_name"]).is_file()


def test_datasets_decodes_the_image_column(tiny_run):
    datasets = pytest.importorskip("datasets")
    _, out = tiny_run
    files = sorted(str(p) for p in (out / "shards").glob("part-*.parquet"))
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(dataset[0]["image"], Image.Image)
    assert dataset[0]["image"].size == (32, 32)


def test_manifest_and_resolved_spec_are_written(tiny_run):
    job, out = tiny_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == manifest["counts"]["planned"] == 9
    assert sum(s["rows"] for s in manifest["shards"]) == 9
    assert manifest["spec_hash"] == load_spec(job).spec_hash()
    assert load_spec(out / "job.yaml").spec_hash() == manifest["spec_hash"]


def test_two_runs_give_byte_identical_images(tiny_run, tmp_path):
    job, out = tiny_run
    other = tmp_path / "B"
    run_job(load_spec(job, {"output.dir": str(other)}), LOCAL)
    first, second = images_by_item(out), images_by_item(other)
    assert first.keys() == second.keys()
    assert all(first[key] == second[key] for key in first)
    assert len(set(first.values())) == len(first)  # different seeds, different images


def test_rerun_skips_committed_items_and_renders_the_rest(write_job, tmp_path, caplog):
    job = write_job()
    partial = run_job(load_spec(job, {"limit": 4}), LOCAL)
    assert partial.rendered == 4
    # --workers with the local distributor is said to do nothing, not silently dropped
    resumed = run_job(load_spec(job), RunOptions(distributor="local", workers=2))
    assert (resumed.skipped, resumed.rendered) == (4, 5)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--workers")]
    assert said == [
        "--workers: the local distributor renders in this process, with one worker; use "
        "--distributor ray to spread the work"
    ]
    table = pd.read_parquet(tmp_path / "out" / "shards", columns=["item_id"])
    assert len(table) == table.item_id.nunique() == 9


def test_a_resume_brings_an_older_augments_shards_to_todays_columns(write_job, tmp_path):
    """A shard written before some columns existed: augment's readers fill them, but pandas
    dropped them from every row of the run and `datasets` refused the mixed shards."""
    import pyarrow.parquet as pq

    datasets = pytest.importorskip("datasets")
    job = write_job()
    run_job(load_spec(job, {"limit": 5}), LOCAL)
    shards = sorted((tmp_path / "out" / "shards").glob("part-*.parquet"))
    old = shards[0]
    pq.write_table(pq.read_table(old).drop_columns(["watermark", "model_hash", "license"]), old)
    fresh = shards[1].read_bytes()

    resumed = run_job(load_spec(job), LOCAL)
    assert (resumed.skipped, resumed.rendered) == (5, 4)
    assert len(pd.read_parquet(tmp_path / "out" / "shards").columns) == len(
        pq.read_schema(shards[1]).names
    )
    assert shards[1].read_bytes() == fresh  # a shard already in today's schema is left as is
    files = sorted(str(p) for p in (tmp_path / "out" / "shards").glob("part-*.parquet"))
    assert len(datasets.load_dataset("parquet", data_files=files, split="train")) == 9


def test_a_shard_of_another_run_in_out_is_refused_not_taken_as_done(write_job, tmp_path):
    """A shard copied in from another run was taken as done: another job's images went into
    the exports; one of a job sharing this one's item ids (in other steps) stood beside this
    job's own, each flagged a duplicate of itself."""
    import shutil

    job = write_job()
    run_job(load_spec(job), LOCAL)
    other = tmp_path / "other"
    run_job(load_spec(job, {"output.dir": str(other), "generation.num_inference_steps": 2}), LOCAL)
    renamed = tmp_path / "renamed"
    run_job(load_spec(job, {"output.dir": str(renamed), "name": "elsewhere"}), LOCAL)
    shards = tmp_path / "out" / "shards"
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    for source, words in [
        (other, r"item \w+ was rendered in 2 steps, this spec in 3"),
        (renamed, r"item \w+ is not in this job's plan"),
    ]:
        copied = shards / "part-00077.parquet"
        shutil.copy(source / "shards" / "part-00000.parquet", copied)
        with pytest.raises(
            OutputError, match=f"part-00077.parquet holds images of another run \\({words}"
        ):
            run_job(load_spec(job), LOCAL)
        copied.unlink()
    shutil.copy(other / "shards" / "part-00000.parquet", shards / "part-00000.parquet")
    with pytest.raises(
        OutputError, match=r"was rendered in 2 steps, this spec in 3\): it was copied"
    ):
        run_job(load_spec(job), LOCAL)
    for name, data in before.items():
        (shards / name).write_bytes(data)
    assert run_job(load_spec(job), LOCAL).skipped == 9  # as it was: nothing lost


def test_an_image_committed_twice_by_a_stopped_runs_worker_is_kept_once(
    write_job, tmp_path, monkeypatch, caplog
):
    """A worker of a killed run can commit its block a moment after its driver died, after
    the rerun has looked and rendered that block again: the next resume refused the run as
    "another run's", and the exports held each of those images twice, flagged duplicates."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from augment import distribute

    job = write_job()
    run_job(load_spec(job), LOCAL)
    out = tmp_path / "out"
    shards = out / "shards"
    first, second = pq.read_table(shards / "part-00000.parquet"), shards / "part-00001.parquet"
    late = pq.read_table(second)
    second.unlink()  # the rerun renders these again, while the late shard holds them and more
    pq.write_table(pa.concat_tables([first, late]), shards / "part-00009.parquet")
    resumed = run_job(load_spec(job), LOCAL)
    assert (resumed.rendered, resumed.skipped) == (0, 9)
    assert "repeats 4 image(s) committed in another shard" in caplog.text
    table = pd.read_parquet(shards)
    assert sorted(table.item_id) == sorted(pd.read_parquet(out / "plan.parquet").item_id)
    assert not table.duplicate.any()

    (shards / "part-00009.parquet").unlink()  # now the late commit lands while this run renders
    local = distribute.DISTRIBUTORS["local"]

    def with_a_late_commit(blocks, *args, **kwargs):
        local(blocks, *args, **kwargs)
        shutil.copy(shards / "part-00000.parquet", shards / "part-00040.parquet")

    monkeypatch.setitem(distribute.DISTRIBUTORS, "local", with_a_late_commit)
    again = run_job(load_spec(job), LOCAL)
    assert (again.rendered, again.skipped, again.duplicates) == (4, 5, 0)
    assert not (shards / "part-00040.parquet").exists()
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 9


def test_changed_spec_is_refused_unless_forced(write_job, tmp_path):
    job = write_job()
    run_job(load_spec(job, {"limit": 2}), LOCAL)
    changed = load_spec(job, {"seed": 99, "limit": 2})
    with pytest.raises(OutputError, match=r"different spec \(.*: seed 7 then, 99 now\).*--force"):
        run_job(changed, LOCAL)
    assert len(pd.read_parquet(tmp_path / "out" / "shards")) == 2  # nothing lost
    forced = run_job(changed, RunOptions(distributor="local", force=True))
    assert (forced.skipped, forced.rendered) == (0, 2)


def test_a_run_resumes_with_cuda_graphs_encoding_threads_or_formats_changed(write_job):
    """Settings of the machine or of the exports, not of the images: the same run."""
    run_job(load_spec(write_job(), {"limit": 4}), LOCAL)
    machine = "  batch_size: 4\n  cuda_graphs: false\n  encode_threads: 0\n"
    text = TINY_JOB.replace("  batch_size: 4\n", machine)
    resumed = run_job(load_spec(write_job(text), {"output.formats": ["yolo"]}), LOCAL)
    assert (resumed.skipped, resumed.rendered) == (4, 5)
    assert resumed.outputs["yolo"].is_file()  # an export added by the spec: written


def test_a_run_that_failed_before_its_first_image_gives_way_to_the_corrected_spec(
    write_job, tmp_path
):
    """A model that cannot load fails after OUT holds the spec; with no image lost, the fixed
    job runs there without --force (a folder with images still needs it, above)."""
    broken = tmp_path / "vae"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    job = write_job(TINY_JOB.replace("  batch_size: 4\n", f"  batch_size: 4\n  vae: {broken}\n"))
    with pytest.raises(ModelError, match="generation.vae: cannot load"):
        run_job(load_spec(job), LOCAL)
    assert (tmp_path / "out" / "job.yaml").is_file()
    fixed = run_job(load_spec(write_job()), LOCAL)
    assert (fixed.skipped, fixed.rendered) == (0, 9)


def test_the_saved_job_keeps_the_widest_limit_the_folder_was_run_with(write_job, tmp_path):
    """A `--limit 2` after a run of 4 left OUT/job.yaml saying 2 beside 4 images."""
    import yaml

    def saved_limit() -> int | None:
        return yaml.safe_load((tmp_path / "out" / "job.yaml").read_text())["limit"]

    run_job(load_spec(write_job(), {"limit": 4}), LOCAL)
    run_job(load_spec(write_job(), {"limit": 2}), LOCAL)
    assert saved_limit() == 4 and len(pd.read_parquet(tmp_path / "out" / "shards")) == 4
    run_job(load_spec(write_job(), {"limit": 5}), LOCAL)
    assert saved_limit() == 5
    run_job(load_spec(write_job(), {"limit": 2}), RunOptions(distributor="local", force=True))
    assert saved_limit() == 2  # --force starts over: the folder holds only what this run made


def test_a_folder_with_exports_or_images_of_unknown_spec_is_never_replaced(write_job, tmp_path):
    """Only a run that made nothing gives way: exports left after its shards were deleted,
    or images with neither job.yaml nor manifest.json to say which spec made them, are kept."""
    import shutil

    out = tmp_path / "out"
    run_job(load_spec(write_job(), {"limit": 2}), LOCAL)
    shutil.rmtree(out / "shards")
    with pytest.raises(OutputError, match="holds a run of a different spec"):
        run_job(load_spec(write_job(), {"seed": 8}), LOCAL)
    assert (out / "coco" / "annotations.json").is_file()
    shutil.rmtree(out)
    run_job(load_spec(write_job(), {"limit": 2}), LOCAL)
    (out / "job.yaml").unlink()
    (out / "manifest.json").unlink()  # as a run stopped by Ctrl-C, its job.yaml then deleted
    with pytest.raises(OutputError, match="neither the job.yaml nor the manifest.json"):
        run_job(load_spec(write_job(), {"seed": 8}), LOCAL)
    assert len(pd.read_parquet(out / "shards")) == 2


def test_a_resume_with_model_or_vae_files_changed_in_place_is_refused(write_job, tmp_path):
    """Same spec, other weights (a model downloaded again, a VAE trained again in its folder):
    resuming would mix two models' images under one spec."""
    import shutil

    tiny = Path(load_spec(write_job()).paths.model)
    model = shutil.copytree(tiny, tmp_path / "model")
    vae = shutil.copytree(tiny / "vae", tmp_path / "vae")
    text = TINY_JOB.replace("builtin:tiny-sd", str(model))
    job = write_job(text.replace("  batch_size: 4\n", f"  batch_size: 4\n  vae: {vae}\n"))
    run_job(load_spec(job, {"limit": 4}), LOCAL)
    (tmp_path / "out" / "manifest.json").unlink()  # as after Ctrl-C: the images say it alone
    config = vae / "config.json"
    original = config.read_text()
    config.write_text(original + "\n")  # any byte: the content hash changes
    with pytest.raises(OutputError, match=rf"the vae {vae} \(\w+ then, now \w+\) changed"):
        run_job(load_spec(job), LOCAL)
    config.write_text(original)
    (model / "model_index.json").write_text((model / "model_index.json").read_text() + "\n")
    with pytest.raises(OutputError, match=r"other weights: the files of generation.model"):
        run_job(load_spec(job), LOCAL)
    assert len(pd.read_parquet(tmp_path / "out" / "shards")) == 4  # nothing lost


def test_unwritable_output_is_a_clear_error(write_job, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    job = write_job(out=blocker / "out")
    with pytest.raises(OutputError, match="is not writable.*--out"):
        run_job(load_spec(job), LOCAL)
    out = tmp_path / "taken"
    (out / "manifest.json").mkdir(parents=True)  # it failed once the images were rendered
    with pytest.raises(OutputError, match=r"manifest.json is a folder, where a run writes its"):
        run_job(load_spec(write_job(out=out)), LOCAL)
    assert not (out / "shards").exists()


def test_a_resume_whose_prompts_an_older_augment_worded_otherwise_is_refused(
    write_job, tmp_path, monkeypatch
):
    """combine: exhaustive once gave the first template's every combination first: the spec
    (and its hash) is the same, and resuming an older folder rendered variant 1's new prompt
    beside its old image, unplanned (2 images of variant 1, none of a plan of 2 left out)."""
    import itertools

    import augment.prompting as prompting

    def nested_order(templates: list[str], slots: dict[str, list[str]]) -> list[tuple]:
        names = {t: [s for s in prompting.template_slots(t) if s in slots] for t in templates}
        return [
            (t, dict(zip(names[t], combo, strict=True)))
            for t in templates
            for combo in itertools.product(*(slots[n] for n in names[t]))
        ]

    templates = 'templates: ["a digit {name}, {viewpoint}", "a drawn digit {name}"]'
    job = write_job(
        TINY_JOB.replace("max_concepts: 3", "max_concepts: 1")
        .replace("images_per_concept: 3", "images_per_concept: 2")
        .replace('templates: ["a handwritten digit {name}"]', templates)
        .replace(
            "prompts:", "prompts:\n  combine: exhaustive\n  attributes: {viewpoint: [top, side]}"
        )
    )
    with monkeypatch.context() as older:
        older.setattr(prompting, "exhaustive_choices", nested_order)
        assert run_job(load_spec(job), LOCAL).rendered == 2
    out = tmp_path / "out"
    rendered = images_by_item(out)
    for overrides in ({}, {"limit": 1}):  # a limited run plans variant 0 alone: still refused
        with pytest.raises(
            OutputError,
            match=r"holds 1 image\(s\) whose prompt this version of augment words otherwise "
            r"\(e.g. zero, variant 1: 'a digit zero, side' then, 'a drawn digit zero' now",
        ):
            run_job(load_spec(job, overrides), LOCAL)
    assert images_by_item(out) == rendered


def test_a_list_file_whose_concepts_were_described_anew_stops_the_resume(tmp_path):
    """The spec's hash does not read the list file: the old prompts' images stayed beside the
    new ones (6 images for a plan of 4). A field no template reads may change."""
    listing = tmp_path / "weeds.yaml"
    entry = "concepts:\n  - {name: dandelion, definition: a yellow flower, scientific_name: %s}\n"
    listing.write_text(entry % "Taraxacum")
    job = TINY_JOB.replace("source: digits", f"source: {listing}")
    job = job.replace("OUT_DIR", str(tmp_path / "out"))
    job = job.replace("digit {name}", "digit {name}, {definition}")
    path = tmp_path / "job.yaml"
    path.write_text(job)
    local = RunOptions(distributor="local")
    run_job(load_spec(path), local)
    listing.write_text(entry % "Taraxacum officinale")  # not in any prompt: resumed
    assert run_job(load_spec(path), local).skipped == 3
    listing.write_text((entry % "Taraxacum").replace("yellow", "golden"))
    with pytest.raises(OutputError, match=r"concepts whose prompts' text changed .*\(dandelion"):
        run_job(load_spec(path), local)


def test_a_resume_with_nothing_to_do_keeps_the_exports_and_gallery_it_made(
    write_job, tmp_path, monkeypatch
):
    """A resume that rendered nothing, or a filter that changed no flag, wrote every export
    and the gallery again: 140 s where the run's own work took 48 s, at 10,000 images."""
    from augment.gallery import write_gallery
    from augment.job import refilter

    job = write_job(
        TINY_JOB.replace(
            "  rows_per_shard: 4\n", "  rows_per_shard: 4\n  formats: [parquet, coco, yolo]\n"
        )
    )
    run_job(load_spec(job), LOCAL)
    out = tmp_path / "out"
    write_gallery(out)
    made = {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.parent.name != "shards"}
    assert {p.parent.name for p in made} >= {"coco", "yolo", "gallery"}
    from augment import job as job_module

    compared = []
    real_pass = job_module.flag_duplicates
    monkeypatch.setattr(
        job_module, "flag_duplicates", lambda *a: compared.append(1) or real_pass(*a)
    )
    again = run_job(load_spec(job), LOCAL)
    assert (again.rendered, again.skipped, compared) == (0, 9, [])  # nor compared again
    assert {p: p.stat().st_mtime_ns for p in made} == made  # not one file written again
    assert again.outputs["coco"] == out / "coco" / "annotations.json"
    refilter(out)  # no scorer: no flag changes (its duplicate pass runs: it may add a pool)
    assert {p: p.stat().st_mtime_ns for p in made} == made
    compared.clear()
    # an image gone from the shards: every export is written again, without it
    shard = out / "shards" / "part-00002.parquet"
    shard.unlink()
    run_job(load_spec(job, {"limit": 8}), LOCAL)
    assert compared == [1]  # the shards changed: the pass runs
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 8
