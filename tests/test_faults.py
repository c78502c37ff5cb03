"""Every command fails well, driven as a user drives it: one line on stderr, exit 2 for bad
input (1 for a fault of augment), never a traceback, and nothing already written lost."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from augment import api
from augment.cli import main
from augment.errors import AugmentError
from tests.conftest import REPO, TINY_JOB, cli, error_line, images_by_item, write_fake_run


def damage(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    if how == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    else:  # junk bytes in its place, of the same length
        shard.write_bytes(bytes(range(256)) * (len(data) // 256))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The tiny job (9 items in shards of 4, 4 and 1) run once; tests copy it."""
    folder = tmp_path_factory.mktemp("finished")
    job = folder / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(folder / "out")))
    assert main(["run", str(job), "--distributor", "local"]) == 0
    return folder


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(job.yaml, OUT) of a private copy of the finished run."""
    shutil.copytree(finished_run / "out", tmp_path / "out")
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    return job, tmp_path / "out"


@pytest.mark.parametrize("how", ["truncated", "junk"])
def test_resume_quarantines_a_damaged_shard_and_renders_exactly_its_items(run_copy, capsys, how):
    job, out = run_copy
    before = images_by_item(out)
    shard = out / "shards" / "part-00001.parquet"
    lost = pq.read_table(shard, columns=["item_id"]).column("item_id").to_pylist()
    damage(shard, how)

    code, stdout, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 0, err
    assert f"warning: shard {shard} cannot be read" in err and "Traceback" not in err
    assert f"{len(lost)} images rendered, {9 - len(lost)} already done" in stdout
    assert (out / "quarantine" / "part-00001.parquet").is_file()
    ids = pd.read_parquet(out / "shards", columns=["item_id"])["item_id"]
    assert len(ids) == ids.nunique() == 9  # the full plan, nothing twice
    assert images_by_item(out) == before  # the same images, rendered again
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quarantined"] == ["part-00001.parquet"]
    assert manifest["counts"]["missing"] == 0
    assert cli(capsys, "run", job, "--distributor", "local", "--force")[0] == 0
    assert not (out / "quarantine").exists()  # --force starts over, quarantine included


def test_a_resume_refuses_images_whose_concept_the_edited_taxonomy_moved(tmp_path, capsys):
    """A list file edited after a run leaves the spec's hash as it was; its concepts' category
    ids move with the list's order, and the images already rendered would be exported under
    other classes."""
    concepts = tmp_path / "mine.yaml"
    concepts.write_text("name: mine\nconcepts: [three, seven]\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        TINY_JOB.replace("source: digits", f"source: {concepts}")
        .replace("images_per_concept: 3", "images_per_concept: 1")
        .replace("OUT_DIR", str(tmp_path / "out"))
    )
    assert cli(capsys, "run", job, "--distributor", "local")[0] == 0
    rendered = images_by_item(tmp_path / "out")

    concepts.write_text("name: mine\nconcepts: [one, three, seven]\n")
    code, _, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 2 and "('three': 1 then, 2 now; 2 concepts in all)" in error_line(err)
    concepts.write_text("name: mine\nconcepts: [three]\n")
    code, _, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 2 and "concepts the taxonomy no longer has (seven)" in error_line(err)
    assert images_by_item(tmp_path / "out") == rendered


def test_a_resumed_run_writes_again_every_export_the_folder_holds(write_job, tmp_path, capsys):
    """An export made by `augment export` in a format the job does not list would otherwise
    miss the images the resumed run adds; --force removes it with the rest."""
    job, out = write_job(), tmp_path / "out"
    assert cli(capsys, "run", job, "--distributor", "local", "--limit", "5")[0] == 0
    assert cli(capsys, "export", out, "--format", "imagefolder", "--format", "yolo-seg")[0] == 0
    assert len(list((out / "imagefolder").rglob("*.png"))) == 5
    assert cli(capsys, "run", job, "--distributor", "local")[0] == 0
    assert len(list((out / "imagefolder").rglob("*.png"))) == 9
    assert len(list((out / "yolo-seg" / "images").glob("*.png"))) == 9
    assert cli(capsys, "run", job, "--distributor", "local", "--force", "--limit", "2")[0] == 0
    assert not (out / "imagefolder").exists() and not (out / "yolo-seg").exists()


def test_a_job_file_is_never_overwritten_by_the_spec_a_run_saves(write_job, tmp_path, capsys):
    job = write_job()  # tmp_path/job.yaml: OUT/job.yaml when OUT is its folder
    written = job.read_text()
    code, _, err = cli(capsys, "run", job, "--out", tmp_path, "--distributor", "local")
    assert code == 2 and "is the output folder's job.yaml" in error_line(err)
    code, _, err = cli(capsys, "run", job, "--out", "", "--distributor", "local")
    assert code == 2 and "argument --out: an empty name" in err  # an unset $OUT: not the cwd
    assert job.read_text() == written and not (tmp_path / "shards").exists()


def test_a_run_without_its_job_yaml_is_still_checked_against_its_manifest(run_copy, capsys):
    job, out = run_copy
    (out / "job.yaml").unlink()
    job.write_text(job.read_text().replace("num_inference_steps: 3", "num_inference_steps: 4"))
    code, _, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 2 and "holds a run of a different spec" in error_line(err)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("job.yaml", "", "job.yaml cannot be read (not a job spec)"),
        ("job.yaml", "name: [", "job.yaml cannot be read (while parsing"),
        ("job.yaml", "name: tiny\n", "job.yaml is not a valid spec"),
        ("manifest.json", '{"job": "tiny", "cou', "manifest.json cannot be read (Unterminated"),
    ],
    ids=["empty-spec", "bad-yaml", "invalid-spec", "truncated-manifest"],
)
def test_a_damaged_job_yaml_or_manifest_is_one_line_saying_how_to_repair_it(
    run_copy, capsys, name, text, expected
):
    job, out = run_copy
    (out / name).write_text(text)
    commands = [("run", job, "--distributor", "local"), ("filter", out)]
    if name == "manifest.json":
        commands.append(("export", out, "--format", "yolo"))
    for command in commands:
        code, _, err = cli(capsys, *command)
        assert code == 2 and expected in error_line(err), command
    assert (out / name).read_text() == text  # nothing rewritten
    if name == "job.yaml":  # the manifest can check the run: a resume is offered, not only --force
        assert "or delete it to resume the run" in error_line(err)
    (out / name).unlink()  # the repair the message gives
    assert cli(capsys, "run", job, "--distributor", "local")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["records"] == 9


def test_export_skips_a_damaged_shard_only_where_it_replaces_no_export(
    run_copy, capsys, monkeypatch
):
    """A new export leaves a damaged shard out (named); one already there, which may be the last
    copy of that shard's images, is kept; a failed export keeps the last one too."""
    _, out = run_copy
    shard = out / "shards" / "part-00000.parquet"
    lost = pq.read_table(shard, columns=["item_id"]).num_rows
    damage(shard, "junk")
    annotations = (out / "coco" / "annotations.json").read_bytes()  # the run's own export

    code, _, err = cli(capsys, "export", out, "--format", "yolo", "--format", "yolo-seg")
    assert code == 0, err
    assert err.count(f"warning: export skips shard {shard}") == 1  # once, for both formats
    images = sorted(p.name for p in (out / "yolo" / "images").iterdir())
    assert len(images) == 9 - lost and (out / "yolo" / "data.yaml").is_file()
    code, _, err = cli(capsys, "export", out, "--format", "coco")
    assert code == 2
    assert "1 shard(s) of" in err and "cannot be read" in err
    assert "the exports there are kept as they were" in err
    assert (out / "coco" / "annotations.json").read_bytes() == annotations
    assert len(json.loads(annotations)["images"]) == 9

    import augment.sinks.yolo as yolo

    calls = []

    def disk_fills_up(record, class_index):
        calls.append(record)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(out / "yolo" / "labels"))
        return []

    monkeypatch.setattr(yolo, "yolo_label_lines", disk_fills_up)
    code, _, err = cli(capsys, "export", out, "--format", "yolo")
    assert code == 2
    warnings, last = err.strip().splitlines()[:-1], err.strip().splitlines()[-1]
    assert all(line.startswith("warning: export skips") for line in warnings)
    assert "yolo/labels: no space left on the device; free some" in error_line(last)
    assert sorted(p.name for p in (out / "yolo" / "images").iterdir()) == images  # the last one
    assert not (out / ".yolo.tmp").exists() and not (out / ".yolo.old").exists()


@pytest.mark.parametrize(
    ("command", "placed", "expected"),
    [
        (["export", "--format", "coco"], "coco/README.txt", "coco holds README.txt, which augment"),
        (["export", "--format", "yolo"], "yolo", "yolo is a file, where augment writes its yolo"),
        (["view"], "gallery/notes.txt", "gallery holds notes.txt, which augment did not write"),
        (["view"], "gallery", "gallery is a file, where augment writes its gallery"),
        (["run"], "coco/README.txt", "coco holds README.txt, which augment did not write"),
    ],
    ids=["export-file-in", "export-file-for", "view-file-in", "view-file-for", "run-file-in"],
)
def test_a_users_file_where_an_export_is_written_again_is_refused_and_kept(
    run_copy, capsys, command, placed, expected
):
    """An export (or gallery) is written again by swapping in a new folder: a file of the user's
    in the old one, or in its place, would be deleted (or hidden as .yolo.old)."""
    job, out = run_copy
    path = out / placed
    if not path.parent.exists():
        path.parent.mkdir()
    path.write_text("my notes")
    args = [job, "--distributor", "local"] if command == ["run"] else [out, *command[1:]]
    code, _, err = cli(capsys, command[0], *args)
    assert code == 2 and expected in error_line(err)
    assert path.read_text() == "my notes"
    assert not list(out.glob(".*.old")) and not list(out.glob(".*.tmp"))


def test_a_manifest_that_lost_a_category_is_named_instead_of_a_fault(run_copy, capsys):
    _, out = run_copy
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["categories"] = manifest["categories"][:1]
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = (out / "coco" / "annotations.json").read_bytes()
    for export in ("imagefolder", "coco"):
        code, _, err = cli(capsys, "export", out, "--format", export)
        assert code == 2 and "manifest.json does not list" in error_line(err)
    assert (out / "coco" / "annotations.json").read_bytes() == before


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("out/shards", "is a run's shards folder; give the run's output folder"),
        ("out/manifest.json", "is a file; give the output folder of `augment run`"),
        ("nowhere", "no such folder; give the output folder of `augment run`"),
    ],
)
def test_export_and_view_name_a_folder_that_is_not_a_run(run_copy, capsys, given, expected):
    """They said "<given>/shards holds no shards" (of a file, of a folder that is not there)."""
    _, out = run_copy
    for command in (
        ["export", out.parent / given, "--format", "coco"],
        ["view", out.parent / given],
    ):
        code, _, err = cli(capsys, *command)
        assert code == 2 and expected in error_line(err)


def test_a_yolo_export_without_a_single_label_says_so(run_copy, capsys):
    """A txt2img run without labels: or segment: has no boxes; its YOLO set is all background."""
    _, out = run_copy
    code, _, err = cli(capsys, "export", out, "--format", "yolo")
    assert code == 0
    assert "warning: yolo: none of its 9 images has a label" in err
    assert all(not path.read_text() for path in (out / "yolo" / "labels").iterdir())


def test_export_keeps_the_last_export_when_no_shard_can_be_read(run_copy, capsys):
    """Every shard damaged: the COCO export there may be the last copy of the images."""
    _, out = run_copy
    annotations = out / "coco" / "annotations.json"
    before = annotations.read_bytes()
    assert len(json.loads(before)["images"]) == 9
    for shard in (out / "shards").glob("*.parquet"):
        damage(shard, "junk")
    code, _, err = cli(capsys, "export", out, "--format", "coco")
    assert code == 2
    last = error_line(err.strip().splitlines()[-1])
    assert f"no shard of {out} can be read" in last and "kept" in last
    assert annotations.read_bytes() == before
    assert len(list((out / "coco" / "images").iterdir())) == 9


USERS_OWN = {  # what a user may keep where a run writes the same name, with no run there
    "coco/images/real_0001.jpg": b"a real photo",  # a real COCO set
    "job.yaml": b"apiVersion: batch/v1\nkind: Job\n",  # a Kubernetes job, no spec at all
    "manifest.json": b'{"dataset": "my photos"}',
}


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize("name", list(USERS_OWN))
def test_a_run_never_replaces_files_augment_did_not_write(write_job, tmp_path, capsys, name, force):
    """A user's own file or folder where a run writes one of that name, in an OUT with no run:
    refused, --force too (it would delete it), saying so instead of "--force to start over"."""
    own = tmp_path / "out" / name
    own.parent.mkdir(parents=True)
    own.write_bytes(USERS_OWN[name])
    code, _, err = cli(capsys, "run", write_job(), "--distributor", "local", *["--force"] * force)
    assert code == 2
    kept = tmp_path / "out" / name.split("/")[0]
    assert f"{kept} was not written by augment" in error_line(err)
    assert own.read_bytes() == USERS_OWN[name]
    assert not (tmp_path / "out" / "shards").exists()  # refused before anything was written


def test_an_output_folder_name_over_255_bytes_is_one_line(write_job, tmp_path, capsys):
    """The error's handler looked the path up to explain it, and that lookup raised too: a
    traceback, exit 1."""
    too_long = tmp_path / ("x" * 300)
    code, _, err = cli(capsys, "run", write_job(), "--distributor", "local", "--out", too_long)
    assert code == 2 and "File name too long" in error_line(err)


def test_an_output_folder_named_in_another_encoding_is_one_line(write_job, tmp_path, capsys):
    """A Latin-1 'café' (a folder made on an old system): Parquet's writer cannot take the
    name, and the run ended as a fault of augment, after making the folder."""
    name = bytes(tmp_path) + b"/caf\xe9"
    latin = os.fsdecode(name)
    code, _, err = cli(capsys, "run", write_job(), "--distributor", "local", "--out", latin)
    assert code == 2
    assert error_line(err) == (
        f"error: --out: {name!r} is not a UTF-8 name, and the Parquet "
        "writer cannot write there; rename it, or choose a path of UTF-8 characters"
    )
    assert not os.path.exists(latin)


def test_a_job_file_of_the_same_spec_in_the_output_folder_is_not_rewritten(tmp_path, capsys):
    """A spec given as a dict (a notebook's) whose own YAML sits in OUT as job.yaml: its
    comments would be replaced by the resolved spec."""
    out = tmp_path / "out"
    out.mkdir()
    text = "# my job\n" + TINY_JOB.replace("OUT_DIR", str(out))
    (out / "job.yaml").write_text(text)
    with pytest.raises(AugmentError, match="job.yaml was not written by augment"):
        api.run(yaml.safe_load(text), distributor="local")
    assert (out / "job.yaml").read_text() == text


@pytest.mark.parametrize("where", ["out", "out/coco"])
def test_force_never_deletes_the_images_a_job_reads(run_copy, tmp_path, capsys, where):
    """img2img from this run's own output (its shards, or its COCO export) with --force, which
    would delete them before they are read."""
    _, out = run_copy
    source = tmp_path / where
    job = tmp_path / "img2img.yaml"
    job.write_text(
        TINY_JOB.replace("OUT_DIR", str(out)).replace(
            "generation:\n", f"source:\n  path: {source}\ngeneration:\n  mode: img2img\n"
        )
    )
    shards = sorted(p.read_bytes() for p in (out / "shards").glob("*.parquet"))
    code, _, err = cli(capsys, "run", job, "--distributor", "local", "--force")
    assert code == 2
    assert f"source.path: {source} is in the output folder {out}" in error_line(err)
    assert sorted(p.read_bytes() for p in (out / "shards").glob("*.parquet")) == shards
    assert len(list((out / "coco" / "images").iterdir())) == 9


@pytest.mark.parametrize(
    "damaged, words",
    [
        ("taxonomy", "not a text file"),
        ("checkpoint", "cannot be read as a .safetensors checkpoint"),
        ("model_index", "model_index.json cannot be read"),
    ],
)
def test_a_damaged_file_a_job_names_is_one_line_before_anything_is_written(
    write_job, tmp_path, capsys, damaged, words
):
    """Files a user hands over can be anything: a binary list file, a truncated checkpoint, a
    model folder whose index is not JSON. A mistake of the user's: exit 2, not a fault."""
    bad = tmp_path / "bad"
    text = TINY_JOB
    if damaged == "taxonomy":
        bad = tmp_path / "concepts.txt"
        bad.write_bytes(b"\x89PNG\x00\xff\xfe junk")
        text = text.replace("source: digits", f"source: {bad}")
    elif damaged == "checkpoint":
        bad = tmp_path / "model.safetensors"
        bad.write_bytes(bytes(range(256)) * 4)
        text = text.replace("builtin:tiny-sd", f"{bad}\n  config: builtin:tiny-sd")
    else:
        bad.mkdir()
        (bad / "model_index.json").write_text("{bad")
        text = text.replace("builtin:tiny-sd", str(bad))
    code, _, err = cli(capsys, "run", write_job(text), "--distributor", "local")
    assert code == 2
    assert words in error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change, words",
    [
        ("  dtype: float16\n", "float16 needs a GPU and this run is on the CPU"),
        ("  device: cuda\n", "'cuda' asked for, but no CUDA GPU is visible"),
    ],
)
def test_a_device_or_dtype_this_machine_cannot_render_with_is_refused_before_out(
    write_job, tmp_path, capsys, change, words
):
    """A local run found these once its workers loaded the model, after OUT was written."""
    job = write_job(TINY_JOB.replace("generation:\n", "generation:\n" + change))
    code, _, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 2
    assert words in error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, words", [("{bad", "cannot be read"), ("{}", "lists no classes")])
def test_a_scorer_folder_with_a_damaged_config_is_one_line(
    run_copy, tmp_path, capsys, config, words
):
    _, out = run_copy
    scorer = tmp_path / "scorer"
    scorer.mkdir()
    (scorer / "scorer.json").write_text(config)
    before = sorted(p.read_bytes() for p in (out / "shards").glob("*.parquet"))
    code, _, err = cli(capsys, "filter", out, "--scorer", scorer)
    assert code == 2
    assert f"filters.scorer: {scorer / 'scorer.json'} {words}" in error_line(err)
    assert sorted(p.read_bytes() for p in (out / "shards").glob("*.parquet")) == before


def test_inspect_reads_an_augment_chunk_another_tool_wrote_as_not_ours(tmp_path, capsys):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("augment", "[1, 2]")  # JSON, but not augment's object
    path = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    code, out, err = cli(capsys, "inspect", path)
    assert code == 0, err
    # the chunk is there: "stripped" sent the user looking for what was not missing
    assert "its `augment` text chunk holds no provenance augment can read" in " ".join(out.split())
    assert "stripped" not in out
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, out, err = cli(capsys, "inspect", plain)
    assert code == 0 and "no provenance: not an augment image, or its text chunks were" in out
    # a chunk's control characters are shown as escapes, not sent to the terminal
    info = PngInfo()
    info.add_text("parameters", "a cat\x1b]0;PWNED\x07\x1b[2J")
    info.add_text("augment", '{"synthetic": true, "job": "j\\u001b[2Jk"}')
    hostile = tmp_path / "[bold]hostile.png"
    Image.new("RGB", (8, 8)).save(hostile, pnginfo=info)
    code, out, err = cli(capsys, "inspect", hostile)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "a cat\\x1b]0;PWNED\\x07\\x1b[2J" in out and "job: j\\x1b[2Jk" in out
    assert "[bold]hostile.png" in out  # the name as it is, not read as markup


@pytest.mark.parametrize(
    "args, words",
    [
        (["detect", "--real", "{tmp}/typo"], "typo"),
        (["detect", "--real", "{tmp}/typo", "--model", "bogus.yaml"], "no such YOLO config"),
        (["classify", "--real", "{tmp}/folder", "--shots", "20"], "only"),
        (["classify", "--model", "resnet18", "--weights", "{tmp}/none.pt"], "is not a file"),
        (["classify", "--steps", "1", "--seeds", "1"], "results.parquet is not a results table"),
        (["sweep", "{tmp}/missing.yaml", "--steps", "1", "--seeds", "2"], "missing.yaml"),
    ],
)
def test_a_benchmark_refuses_bad_input_before_it_trains_or_clears_anything(
    tmp_path, capsys, args, words
):
    """What OUT already holds (trained detectors, the split, results) outlives a mistake."""
    out = tmp_path / "bench"
    kept = {
        out / "detect" / "runs" / "real_only-0" / "weights" / "best.pt": b"weights",
        out / "split.json": b'{"split": "the last run\'s"}',
    }
    if "results.parquet" in words:
        kept[out / "results.parquet"] = b"not parquet"
    for path, data in kept.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for shade, name in ((80, "a"), (160, "b")):  # two classes of 12 images: too few for 20 shots
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(12):
            image = Image.new("RGB", (16, 16), (i * 20, shade, 0))
            image.save(tmp_path / "folder" / name / f"{i}.png")
    given = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    code, _, err = cli(capsys, "bench", *given, "--out", out)
    assert code == 2
    assert words in error_line(err)
    assert {path: path.read_bytes() for path in kept} == kept
    assert not (out / "runs").exists()  # the sweep trained nothing


IMAGE = {"id": 1, "file_name": "a.png"}
CATEGORY = {"id": 1, "name": "seven"}


@pytest.mark.parametrize("bench", ["classify", "detect"])
@pytest.mark.parametrize(
    "document, words",
    [
        ([1, 2], "its top level is not an object"),
        ({"images": [], "categories": [CATEGORY]}, "no images list, or an empty one"),
        ({"images": [IMAGE]}, "no categories list"),
        ({"images": [{"id": 1}], "categories": [CATEGORY]}, "images[0] lacks id or file_name"),
        (
            {
                "images": [IMAGE],
                "categories": [CATEGORY],
                "annotations": [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 4, 4]}],
            },
            "annotations[0] has category_id 99, not among the categories",
        ),
        (
            {
                "images": [IMAGE],
                "categories": [CATEGORY],
                "annotations": [{"image_id": 1, "category_id": 1}],
            },
            "annotations[0] has no bbox",
        ),
    ],
)
def test_a_real_coco_file_that_is_not_one_is_one_line(tmp_path, capsys, bench, document, words):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(document))
    code, _, err = cli(capsys, "bench", bench, "--real", path, "--out", tmp_path / "bench")
    assert code == 2
    assert f"{path}: not a COCO annotations file the benchmark can read: {words}" in error_line(err)


def test_an_image_folder_class_of_one_image_is_one_line(tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "real" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (len(name), 0, 0)).save(tmp_path / "real" / name / "0.png")
    (tmp_path / "real" / "dog" / "1.png").write_bytes(
        (tmp_path / "real" / "cat" / "0.png").read_bytes()
    )
    code, _, err = cli(
        capsys, "bench", "classify", "--real", tmp_path / "real", "--out", tmp_path / "b"
    )
    assert code == 2
    assert "class cat has one image" in error_line(err)


def test_a_ray_address_ray_cannot_read_is_one_line(write_job):
    """In a fresh process: this one may hold a Ray already, which an address would not reach."""
    import subprocess
    import sys

    augment = Path(sys.executable).parent / "augment"
    done = subprocess.run(
        [augment, "run", write_job(), "--address", "not-an-address"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach a Ray cluster at not-an-address" in error_line(done.stderr)


def test_serve_refuses_a_write_folder_it_cannot_write_before_ray_starts(
    write_job, tmp_path, capsys
):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, _, err = cli(capsys, "serve", write_job(), "--write", afile, "--port", port)
    assert code == 2
    assert "choose another with --write" in error_line(err)
    assert afile.read_text() == "mine"


def test_paste_before_the_run_says_to_run_the_job_first(tmp_path):
    spec = api.load_spec(REPO / "jobs" / "tiny" / "paste.yaml", {"output.dir": str(tmp_path)})
    with pytest.raises(AugmentError, match="holds no renders of this job yet: `augment run JOB`"):
        api.paste(spec)
    assert not (tmp_path / "paste").exists()


def test_reading_a_damaged_run_names_the_shard(run_copy, capsys):
    _, out = run_copy
    damage(out / "shards" / "part-00002.parquet", "truncated")
    with pytest.raises(api.AugmentError, match="shard .*part-00002.parquet cannot be read"):
        api.read(out)
    code, _, err = cli(capsys, "bench", "classify", "--synthetic", out, "--smoke", "--out", out)
    assert code == 2 and "part-00002.parquet cannot be read" in error_line(err)


BAD_OPTIONS = [
    (["bench", "classify", "--shots", "0"], "shots must be at least 1, got 0"),
    (["bench", "classify", "--seeds", "0"], "seeds must be at least 1, got 0"),
    (["bench", "classify", "--steps", "0"], "steps must be at least 1, got 0"),
    (["bench", "classify", "--ratios", "-1"], "ratios must be finite and greater than 0, got -1"),
    (["bench", "classify", "--shots", "five"], "argument --shots: expected numbers like 5,10"),
    (["bench", "detect", "--real", "nowhere", "--epochs", "0"], "epochs must be at least 1"),
    (["bench", "classify", "--synthetic", "OUT", "--shots", "2"], "made: no such folder"),
    (["bench", "detect", "--real", "nowhere", "--synthetic", "OUT"], "made: no such folder"),
    (["bench", "sweep", "JOB", "--seeds", "1"], "sweep seeds 1: 2 or more (an interval needs"),
    (["bench", "sweep", "JOB", "--ratios", "0"], "sweep ratios [0.0]: finite and above 0"),
    (["run", "JOB", "--workers", "0"], "workers must be at least 1, got 0"),
    (["run", "JOB", "--workers", "-3"], "workers must be at least 1, got -3"),
    (["run", "JOB", "--retries", "-1"], "retries must be at least 0, got -1"),
    (["run", "JOB", "--limit", "0"], "limit (an override): must be >= 1, got 0"),
    (["run", "JOB", "--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
    (["taxonomy", "show", "digits", "--max", "0"], "max_concepts must be at least 1, got 0"),
    (["taxonomy", "show", "digits", "--depth", "0"], "depth must be at least 1, got 0"),
    (["digits", "canvases", "--real", "OUT", "--train", "0"], "train canvases must be at least 1"),
    (["taxonomy", "show", "REPO/augment/taxonomies/"], "is a folder"),
    (["digits", "train", "--out", "OUT", "--device", "gpu"], "device: 'gpu' is not a device"),
    (["digits", "train", "--out", "OUT", "--seed", "-1"], "seed must be at least 0, got -1"),
]


@pytest.mark.parametrize(
    ("args", "expected"), BAD_OPTIONS, ids=[" ".join(args[:4]) for args, _ in BAD_OPTIONS]
)
def test_out_of_range_options_are_one_line_and_write_nothing(
    args, expected, write_job, tmp_path, capsys
):
    job = write_job()
    names = {"JOB": str(job), "OUT": str(tmp_path / "made"), "REPO": str(REPO)}
    args = [names.get(a, a.replace("REPO", str(REPO))) for a in args]
    if args[0] == "bench":
        args += ["--out", str(tmp_path / "bench")]
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert expected in error_line(err)
    assert not (tmp_path / "bench").exists() and not (tmp_path / "made").exists()
    assert not (tmp_path / "out").exists()  # the job's output folder was never created


#: A results table of one measurement, as `augment bench classify` writes it.
ONE_RESULT = pd.DataFrame(
    {
        "task": ["classify"],
        "arm": ["real_only"],
        "ratio": [0.0],
        "shots": [10],
        "seed": [0],
        "metric": ["top1"],
        "label": [""],
        "value": [90.0],
    }
)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (b"PAR1 this is not a table", "is not a readable results table"),
        (pd.concat([ONE_RESULT, ONE_RESULT]), "1 rows repeat another row's task, arm"),
        (ONE_RESULT.assign(ratio=["0.0"]), "column ratio holds"),
        (ONE_RESULT.assign(value=[float("nan")]), "1 empty score(s) (NaN), the first real_only"),
        (ONE_RESULT.assign(seed=[float("nan")]), "column seed is empty in 1 row(s)"),
        (ONE_RESULT.assign(label=[None]), "column label is empty in 1 row(s)"),
        (ONE_RESULT.assign(value=[float("inf")]), "1 score(s) are infinite"),
        (pd.DataFrame({"arm": ["real_only"], "value": [1.0]}), "no column task, ratio, shots"),
        (
            pd.DataFrame(
                {
                    c: []
                    for c in ("task", "arm", "ratio", "shots", "seed", "metric", "label", "value")
                }
            ),
            "holds no results",
        ),
    ],
    ids=["junk", "repeated", "text", "nan", "nan-seed", "no-label", "inf", "columns", "empty"],
)
def test_a_results_table_that_is_not_one_is_one_line(table, expected, tmp_path, capsys):
    path = tmp_path / "results.parquet"
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        table.to_parquet(path)
    written = path.read_bytes()
    code, _, err = cli(capsys, "report", tmp_path)
    assert code == 2 and expected in error_line(err)
    assert path.read_bytes() == written and not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ("sweep.csv", "is not JSON"),
        ("{}", "is not a sweep's report (no chosen)"),
        (None, "sweep.json: no such file"),  # a folder without one
    ],
    ids=["csv", "other-json", "folder"],
)
def test_a_sweep_that_is_not_one_is_one_line(sweep, expected, tmp_path, capsys):
    ONE_RESULT.to_parquet(tmp_path / "results.parquet")
    given = tmp_path / "sweep"
    given.mkdir()
    if sweep is not None:
        given = given / "sweep.json"
        given.write_bytes(b"stage,steps\nsteps,40\n" if sweep == "sweep.csv" else sweep.encode())
    code, _, err = cli(capsys, "report", tmp_path, "--sweep", given)
    assert code == 2 and expected in error_line(err)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("option", "given", "expected"),
    [
        ("--synthetic", "results.parquet", "results.parquet is a file; give the output folder"),
        ("--synthetic", ".", "holds no shards: not an `augment run` output"),
        ("--real", "missing", "real data"),
    ],
    ids=["synthetic-file", "synthetic-not-a-run", "real-missing"],
)
def test_sample_sets_that_cannot_be_read_stop_the_report_before_it_writes(
    option, given, expected, tmp_path, capsys
):
    ONE_RESULT.to_parquet(tmp_path / "results.parquet")
    run = write_fake_run(tmp_path / "run", np.zeros((1, 8, 8, 3), np.uint8), [0])
    options = {"--synthetic": str(run), "--real": "digits", option: str(tmp_path / given)}
    code, _, err = cli(capsys, "report", tmp_path, *(x for kv in options.items() for x in kv))
    assert code == 2 and expected in error_line(err)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["digits", "train", "--steps", "1", "--no-samples", "--out"],
        ["digits", "train-scorer", "--steps", "1", "--out"],
        ["digits", "canvases", "--train", "1", "--val", "1", "--real"],
        ["demo", "--quick", "--out"],
    ],
    ids=["train", "train-scorer", "canvases", "demo"],
)
def test_the_digits_commands_never_write_over_a_users_folder(command, tmp_path, capsys):
    """Each replaces (or rewrites) the folder it wrote before: a folder of the user's files
    is refused at once, before any training, and kept; so is the current folder."""
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)  # a COCO set of the user's, say
    (mine / "train" / "annotations.json").write_text('{"images": []}')
    (mine / "README.md").write_text("my notes")
    code, _, err = cli(capsys, *command, mine)
    assert code == 2 and "error: " in error_line(err)
    assert (mine / "README.md").read_text() == "my notes"
    assert (mine / "train" / "annotations.json").read_text() == '{"images": []}'
    assert sorted(path.name for path in mine.iterdir()) == ["README.md", "train"]


def test_the_novel_concept_experiment_refuses_a_summary_it_cannot_add_to(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("[1, 2]")  # not the demo's: it was found at the end
    code, _, err = cli(capsys, "demo", "--personalise", "--quick", "--out", tmp_path)
    assert code == 2 and "summary.json is not a demo's summary" in error_line(err)
    assert (tmp_path / "summary.json").read_text() == "[1, 2]"
    assert not (tmp_path / "personalise").exists()


def test_a_model_is_never_written_over_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "digits", "train", "--steps", "1", "--out", ".")
    assert code == 2 and "is the current folder" in error_line(err)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_report_is_not_written_over_the_users_files(tmp_path, capsys):
    ONE_RESULT.to_parquet(tmp_path / "results.parquet")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")  # one of the report's names: its own, then
    (mine / "plan.txt").write_text("mine")
    code, _, err = cli(capsys, "report", tmp_path, "--out", mine)
    assert code == 2 and "mine holds plan.txt, which augment report did not" in error_line(err)
    assert (mine / "report.md").read_text() == "my notes"
    code, _, err = cli(capsys, "report", tmp_path)  # its own folder, written again
    assert code == 0 and cli(capsys, "report", tmp_path)[0] == 0, err


def test_a_real_set_without_a_synthetic_one_says_there_is_no_sample_grid(tmp_path, capsys):
    ONE_RESULT.to_parquet(tmp_path / "results.parquet")
    code, _, err = cli(capsys, "report", tmp_path, "--real", "digits")
    assert code == 0 and "warning: no sample grid" in err
    assert not (tmp_path / "report" / "samples.png").exists()


def test_a_run_filter_export_or_view_of_a_folder_another_process_writes_is_refused(
    run_copy, capsys
):
    """Nothing locked OUT: a --force run started beside a running one mixed two runs' shards
    (118 rows for a plan of 20, some twice). Another process's lock is held here."""
    import fcntl

    job, out = run_copy
    shards = sorted(p.read_bytes() for p in (out / "shards").glob("*.parquet"))
    with open(out / ".augment.lock", "w") as other:
        other.write("pid 12345 on elsewhere")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        commands = [["run", job, "--distributor", "local", "--force"], ["filter", out]]
        # two exports (or galleries) at once deleted each other's temporary folders
        commands += [["export", out, "--format", "coco"], ["view", out]]
        for command in commands:
            code, _, err = cli(capsys, *command)
            assert code == 2
            assert "is being written by another augment process (pid 12345" in error_line(err)
    assert sorted(p.read_bytes() for p in (out / "shards").glob("*.parquet")) == shards
    code, _, err = cli(capsys, "run", job, "--distributor", "local")  # once it has ended
    assert code == 0, err


def test_an_export_or_gallery_swap_stopped_half_way_is_put_back_not_lost(run_copy, capsys):
    """A process killed between the two renames that swap an export (or the gallery) in left
    only `.coco.old` and `.coco.tmp`: the next command deleted the old one, and an export only
    `augment export` had made was gone; the gallery, deleted before its new one moved in,
    could be left without its thumbnails."""
    job, out = run_copy
    assert cli(capsys, "export", out, "--format", "yolo", "--include-flagged")[0] == 0
    assert cli(capsys, "view", out)[0] == 0
    for name in ("yolo", "gallery"):  # killed after the first rename
        (out / name).rename(out / f".{name}.old")
        (out / f".{name}.tmp").mkdir()
    code, _, err = cli(capsys, "filter", out)
    assert code == 0, err
    assert "put back as it was" in err
    assert (out / "yolo" / "data.yaml").is_file() and (out / "gallery" / "index.html").is_file()
    assert json.loads((out / "yolo" / ".augment-export.json").read_text())["include_flagged"]
    assert list((out / "gallery" / "images").iterdir())
    assert not [p.name for p in out.iterdir() if p.name.endswith((".old", ".tmp"))]


def test_a_fault_of_augment_is_one_line_exit_1(write_job, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("concept_name")

    monkeypatch.setattr(api, "plan", broken)
    code, _, err = cli(capsys, "plan", write_job())
    assert code == 1
    line = error_line(err)
    assert "KeyError: 'concept_name'" in line and "--debug" in line
    for where in (["--debug", "plan", write_job()], ["plan", write_job(), "--debug"]):
        with pytest.raises(KeyError, match="concept_name"):  # the traceback, either way
            cli(capsys, *where)


def test_unreadable_source_images_are_listed_and_the_rest_render(tmp_path, capsys):
    for digit in ("three", "seven"):
        (tmp_path / "folder" / digit).mkdir(parents=True)
        Image.new("RGB", (32, 32), (220, 220, 220)).save(tmp_path / "folder" / digit / "a.png")
    junk = tmp_path / "folder" / "seven" / "b.png"
    junk.write_bytes(b"\x89PNG not really")
    cut = tmp_path / "folder" / "three" / "cut.jpg"  # its header reads, its pixels do not
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:900])
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    job = job.replace("builtin:digits-canvases", str(tmp_path / "folder"))
    job = job.replace("num_inference_steps: 10", "num_inference_steps: 4")
    (tmp_path / "job.yaml").write_text(job.replace("out/tiny/img2img", str(tmp_path / "out")))

    code, stdout, err = cli(capsys, "run", tmp_path / "job.yaml", "--distributor", "local")
    assert code == 2  # the user's files: a rerun ("rerun to retry them") could never help
    assert f"1 source image(s) cannot be read and are left out, first {junk}" in err
    last = err.strip().splitlines()[-1]
    assert "error: 2 failed, first " in last and "cut.jpg) cannot be read" in last
    assert last.endswith("; replace or remove those source images")
    summary = " ".join(stdout.split())  # as wrapped at any width
    assert "2 images rendered, 0 already done, of 3 planned; " in summary
    assert "2 failed (2 unreadable source image(s))" in summary
    failures = json.loads((tmp_path / "out" / "manifest.json").read_text())["failures"]
    assert [f["source"] for f in failures] == [str(cut), str(junk)]


def test_more_workers_than_the_cluster_has_run_on_those_that_fit(
    write_job, tmp_path, capsys, ray_session
):
    job = write_job(TINY_JOB.replace("batch_size: 4", "batch_size: 1"))  # 9 blocks
    code, stdout, err = cli(capsys, "run", job, "--workers", "4")
    assert code == 0, err
    assert (
        "warning: --workers 4: this Ray cluster has 2 CPUs (a worker takes one); running 2" in err
    )
    assert "9 images rendered" in stdout
    ids = pd.read_parquet(tmp_path / "out" / "shards", columns=["item_id"])["item_id"]
    assert len(ids) == ids.nunique() == 9


def test_a_long_concept_name_gives_a_short_distinct_file_name():
    from augment.taxonomy.listfile import slugify

    first, second = "a" * 300 + " one", "a" * 300 + " two"
    assert len(slugify(first)) <= 80 and slugify(first) != slugify(second)
    assert slugify("Prickly acacia") == "prickly_acacia"
    assert slugify("C++ (language)") == "c_language" and slugify("__a__b__") == "a_b"
    # every script's letters, one Unicode form: 猫 and 犬 were both "concept"
    assert [slugify(n) for n in ("猫", "犬", "Crème brûlée")] == ["猫", "犬", "crème_brûlée"]
    assert slugify("cafe\u0301") == slugify("caf\u00e9") == "café"
    long = slugify("猫" * 300)  # cut in bytes: 80 CJK characters are 240
    assert len(long.encode()) <= 80 and long != slugify("猫" * 301)


@pytest.mark.parametrize("damage", [b"xx", b""], ids=["garbage", "empty"])
def test_a_damaged_plan_is_planned_again_not_a_fault(write_job, tmp_path, capsys, damage):
    """A damaged OUT/plan.parquet made `run` and `filter` fail as a fault of augment (exit 1),
    though a deleted one resumed."""
    job = write_job()
    assert cli(capsys, "run", job, "--distributor", "local")[0] == 0
    out = tmp_path / "out"
    shards = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    (out / "plan.parquet").write_bytes(damage)
    code, _, err = cli(capsys, "filter", out)
    assert code == 0 and "plan.parquet cannot be read" in err, err
    code, stdout, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 0, err
    assert err.count("plan.parquet cannot be read") == 1 and "writes it anew" in err
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == shards
    assert len(pd.read_parquet(out / "plan.parquet")) == 9  # whole again


def test_a_full_disk_or_read_only_folder_is_the_machines_one_line_with_the_right_remedy(tmp_path):
    """pyarrow's ENOSPC carries no file name: it read as a fault of augment (exit 1). A
    read-only folder holding a run was told to choose another --out, which starts over."""
    import errno

    from augment.cli import one_line
    from augment.job import not_writable

    full = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space")
    line, code = one_line(full)
    assert code == 2 and line.startswith("error: no space left on the device; free some")
    assert line.endswith("what was committed is kept: rerun the same command")
    line, code = one_line(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x")))
    assert code == 2 and "x: the file system is read-only" in line
    (tmp_path / "run" / "shards").mkdir(parents=True)
    (tmp_path / "run" / "shards" / "part-00000.parquet").write_bytes(b"")
    refused = OSError(errno.EROFS, "Read-only file system")
    held = str(not_writable(tmp_path / "run", refused, "choose another with --out"))
    assert "give write access to it to resume the run it holds (or choose another" in held
    empty = str(not_writable(tmp_path, refused, "choose another with --out"))
    assert empty.endswith("(Read-only file system); choose another with --out")


def test_a_filter_stopped_half_way_is_finished_before_anything_builds_on_it(
    write_job, tmp_path, capsys, monkeypatch
):
    """A Ctrl-C while a filter rewrote shards left some with its flags, the rest with the
    earlier ones; a resumed run and later filters took that mixture as it was."""
    from augment import job as job_module

    job = write_job()
    assert cli(capsys, "run", job, "--distributor", "local")[0] == 0
    out = tmp_path / "out"

    def stopped(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(job_module, "flag_duplicates", stopped)  # mid-way through the shards
    assert cli(capsys, "filter", out)[0] == 130
    monkeypatch.undo()
    assert (out / ".filter-in-progress.json").is_file()
    code, _, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 2 and "holds a filter that was stopped half way" in err
    assert f"finish it first with `augment filter {out}`" in "".join(err.split("\n"))
    code, _, err = cli(capsys, "filter", out, "--real", "digits")  # another filter: refused
    assert code == 2 and "stopped half way" in err
    for command in (["export", out, "--format", "coco"], ["view", out]):  # went ahead silently
        code, _, err = cli(capsys, *command)
        assert code == 2 and "stopped half way" in err, command
    assert cli(capsys, "filter", out)[0] == 0  # the same one again finishes it
    assert not (out / ".filter-in-progress.json").exists()
    assert cli(capsys, "run", job, "--distributor", "local")[0] == 0
    # stopped while it rewrote the exports: they kept the earlier flags, and nothing said so
    monkeypatch.setattr(job_module, "export", stopped)
    assert cli(capsys, "filter", out)[0] == 130
    monkeypatch.undo()
    assert (out / ".filter-in-progress.json").is_file()
    assert cli(capsys, "export", out, "--format", "coco")[0] == 2
    assert cli(capsys, "filter", out)[0] == 0
