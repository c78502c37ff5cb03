"""Copy-paste: segmented renders pasted onto real backgrounds, their boxes and masks exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import augment as ag
from augment.config import PasteSpec, load_spec
from augment.errors import OutputError, SpecError
from augment.job import RunOptions, paste, paste_backgrounds, run_job
from augment.labels.paste import Instance, paste_onto, shared_share
from augment.labels.segment import decode_rle
from augment.provenance import read_png_chunks
from augment.sinks import export, export_records, image_file_name
from tests.conftest import REPO, error_line, run_cli, train_yolo_one_epoch

LOCAL = RunOptions(distributor="local")


def tiny_paste_spec(out: Path, **changes):
    overrides = {
        "output.dir": str(out),
        "prompts.images_per_concept": 1,
        "generation.num_inference_steps": 6,
        "paste.backgrounds.limit": 4,
        **changes,
    }
    return load_spec(REPO / "jobs" / "tiny" / "paste.yaml", overrides)


@pytest.fixture(scope="module")
def pasted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paste") / "out"
    result = run_job(tiny_paste_spec(out), LOCAL)
    assert result.outputs["paste"] == out / "paste"
    return out


def test_a_paste_beside_another_writer_is_refused_and_a_damaged_record_pasted_again(
    pasted, tmp_path, caplog
):
    """Two `augment paste` at once each wrote every canvas (140 rows for 96, 48 twice), and a
    paste beside a run pasted from its partial renders: OUT's lock was not taken. A damaged
    paste.json was a JSONDecodeError "fault of augment"; the paste is OUT's to make again."""
    import fcntl

    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    rows = len(pd.read_parquet(out / "paste" / "shards"))
    with open(out / ".augment.lock", "w") as other:
        other.write("pid 12345 on elsewhere")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="is being written by another augment process"):
            ag.paste(tiny_paste_spec(out), force=True)
    assert len(pd.read_parquet(out / "paste" / "shards")) == rows
    (out / "paste" / "paste.json").write_text("{damaged")
    with caplog.at_level("WARNING", logger="augment"):
        result = ag.paste(tiny_paste_spec(out))
    assert "paste.json cannot be read" in caplog.text and "pasting again" in caplog.text
    assert result.pasted == rows and len(pd.read_parquet(out / "paste" / "shards")) == rows


def test_a_damaged_paste_shard_is_set_aside_and_its_canvases_pasted_again(pasted, tmp_path, caplog):
    """Its message sent the user to `augment run`, which stopped on it again: only --force,
    pasting every canvas again, got out."""
    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    before = pd.read_parquet(out / "paste" / "shards").sort_values("item_id")
    shard = sorted((out / "paste" / "shards").glob("*.parquet"))[0]
    lost = len(pq.read_table(shard))
    shard.write_bytes(shard.read_bytes()[:300])
    with caplog.at_level("WARNING", logger="augment"):
        result = ag.paste(tiny_paste_spec(out))
    assert result.pasted == lost and "its items are pasted again" in caplog.text
    assert (out / "paste" / "quarantine" / shard.name).is_file()
    after = pd.read_parquet(out / "paste" / "shards").sort_values("item_id")
    assert list(after["item_id"]) == list(before["item_id"])
    assert [i["bytes"] for i in after["image"]] == [i["bytes"] for i in before["image"]]
    shard = sorted((out / "paste" / "shards").glob("*.parquet"))[-1]
    shard.write_bytes(b"junk")  # and through the run, which pastes last
    run_job(tiny_paste_spec(out), LOCAL)
    assert len(pd.read_parquet(out / "paste" / "shards")) == len(before)


def test_composites_keep_the_background_boxes_and_add_each_instance_with_its_mask(pasted):
    from augment.sources import SourceSet

    renders = set(pd.read_parquet(pasted / "shards")["item_id"])
    frame = pd.read_parquet(pasted / "paste" / "shards")
    spec = tiny_paste_spec(pasted)
    backgrounds = SourceSet(spec.paths.backgrounds, "auto", 4)
    assert len(frame) == 8 and set(frame["mode"]) == {"paste"}
    for _, row in frame.iterrows():
        own = [b for b in row["boxes"] if b["labeller"] is None]
        added = [b for b in row["boxes"] if b["labeller"] == "paste"]
        truth = backgrounds.by_id[row["source_image_id"]].boxes
        assert [list(b["bbox"]) for b in own] == [list(b.bbox) for b in truth]
        for box, source in zip(own, truth, strict=True):  # its mask, where nothing covers it
            seen = decode_rle(box["rle"], row["height"], row["width"])
            assert source.mask is not None and 0 < seen.sum() == box["area"]
            assert seen.sum() <= decode_rle(source.mask, row["height"], row["width"]).sum()
        assert 1 <= len(added) <= 3
        for box in added:
            assert box["instance_of"] in renders
            mask = decode_rle(box["rle"], row["height"], row["width"])
            x, y, w, h = (int(v) for v in box["bbox"])
            assert mask.sum() == box["area"] == mask[y : y + h, x : x + w].sum() > 0
            for other in own:  # the overlap limit against the background's own boxes
                assert shared_share(list(box["bbox"]), list(other["bbox"])) <= 0.05
        # Its PNG says what it is made of: a real background and generated instances.
        carried = json.loads(read_png_chunks(row["image"]["bytes"])["augment"])
        assert carried["synthetic"] is True and carried["item_id"] == row["item_id"]
        assert carried["composite"]["background"] == row["source_image_id"]
        assert {b["instance_of"] for b in added} <= set(carried["composite"]["pasted"])


def test_coco_export_evaluates_as_bbox_and_segm_and_yolo_lists_every_box(pasted):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_file = pasted / "paste" / "coco" / "annotations.json"
    document = json.loads(coco_file.read_text())
    masks = [a for a in document["annotations"] if isinstance(a["segmentation"], dict)]
    # the pasted instances' masks, and the backgrounds' own (which were rectangles)
    assert {a.get("labeller") for a in masks} == {"paste", None}
    boxes_only = [a for a in document["annotations"] if a.get("mask") is False]
    assert len(boxes_only) + len(masks) == len(document["annotations"])
    truth = COCO(str(coco_file))
    detections = truth.loadRes([{**a, "score": 1.0} for a in masks])
    for kind in ("bbox", "segm"):
        evaluation = COCOeval(truth, detections, kind)
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        assert 0 < evaluation.stats[0] <= 1
    labels = list((pasted / "paste" / "yolo" / "labels").glob("*.txt"))
    lines = sum(len(p.read_text().splitlines()) for p in labels)
    assert len(labels) == 8 and lines == len(document["annotations"])


def test_paste_is_seeded_and_resumes(pasted, tmp_path):
    """The same paste again gives the same bytes; a lost shard is pasted again, nothing else."""
    frame = pd.read_parquet(pasted / "paste" / "shards").set_index("item_id")
    spec = tiny_paste_spec(pasted)
    again = paste(spec)
    assert again.skipped == 8 and again.pasted == 0
    shards = sorted((pasted / "paste" / "shards").glob("*.parquet"))
    lost = pd.read_parquet(shards[0])["item_id"].tolist()
    shards[0].unlink()
    resumed = paste(spec)
    assert resumed.pasted == len(lost) and resumed.skipped == 8 - len(lost)
    after = pd.read_parquet(pasted / "paste" / "shards").set_index("item_id")
    for item_id in frame.index:
        assert after.loc[item_id, "image"]["bytes"] == frame.loc[item_id, "image"]["bytes"]
    changed = tiny_paste_spec(pasted, **{"paste.feather": 2.0})
    with pytest.raises(
        Exception, match=r"holds a paste made with other paste: settings \(feather\)"
    ):
        paste(changed)
    edited = tiny_paste_spec(pasted, seed=5)  # the job file edited since OUT was rendered
    with pytest.raises(
        OutputError, match=r"holds the renders of a different spec \(.*: seed 0 then, 5 now\)"
    ):
        paste(edited)
    # A paste an earlier augment made (its marker had the hash alone) is made again, the same.
    marker = pasted / "paste" / "paste.json"
    marker.write_text(json.dumps({"paste_hash": "0123456789abcdef", "job": spec.name}))
    redone = paste(spec)
    assert redone.pasted == 8 and redone.skipped == 0
    after = pd.read_parquet(pasted / "paste" / "shards").set_index("item_id")
    assert all(
        after.loc[i, "image"]["bytes"] == frame.loc[i, "image"]["bytes"] for i in frame.index
    )


def test_a_paste_after_a_limited_run_is_made_again_from_every_render(tmp_path):
    """`run --limit` then the whole run: the paste draws from all the renders, as one whole
    run's does (it was kept, drawn from the first few)."""

    def sources(out: Path) -> set[str]:
        boxes = pd.read_parquet(out / "paste" / "shards")["boxes"]
        return {box["instance_of"] for row in boxes for box in row if box["instance_of"]}

    out = tmp_path / "out"
    run_job(tiny_paste_spec(out, limit=3), LOCAL)
    assert len(sources(out)) <= 3
    run_job(tiny_paste_spec(out), LOCAL)
    whole = tmp_path / "whole"
    run_job(tiny_paste_spec(whole), LOCAL)
    assert sources(out) == sources(whole) and len(sources(whole)) > 3
    frames = [pd.read_parquet(o / "paste" / "shards").sort_values("item_id") for o in (out, whole)]
    assert [i["bytes"] for i in frames[0]["image"]] == [i["bytes"] for i in frames[1]["image"]]


def test_masks_given_to_the_detector_boxes_are_pasted_as_without_labels(pasted, tmp_path):
    """labels: + segment: (jobs/coco-txt2img-labelled.yaml's recipe): each render's mask is on
    its detector box, cut to that box, and is the instance pasted, cut along the mask as in a
    run without labels."""
    out = tmp_path / "labelled"
    labels = {"detector": "builtin:tiny-grounding-dino", "threshold": 0.0}
    run_job(tiny_paste_spec(out, labels=labels), LOCAL)
    renders = pd.read_parquet(out / "shards")
    assert not renders["not_found"].any()
    masked = {}
    for item_id, height, width, boxes in renders[["item_id", "height", "width", "boxes"]].values:
        assert {b["labeller"] for b in boxes} == {"grounding-dino"}
        assert sum(b["rle"] is not None for b in boxes) <= 1
        for box in boxes:
            if box["rle"] is not None:  # inside its detector box
                mask = decode_rle(box["rle"], height, width)
                x, y, w, h = box["bbox"]
                inside = mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
                assert mask.sum() == inside.sum() == box["area"]
                masked[item_id] = int(mask.sum())
    frames = [pd.read_parquet(o / "paste" / "shards").sort_values("item_id") for o in (pasted, out)]
    assert len(frames[1]) == len(frames[0]) > 0
    for boxes in frames[1]["boxes"]:  # each pasted instance is one of those masks, scaled
        assert all(b["instance_of"] in masked for b in boxes if b["labeller"] == "paste")


def test_later_instances_trim_earlier_masks_and_respect_the_overlap_limit():
    square = Instance("a", 1, None, np.full((10, 10, 3), 255, np.uint8), np.ones((10, 10), bool))
    settings = PasteSpec(
        backgrounds={"path": "x"},
        instances=(6, 6),
        scale=(0.5, 0.5),
        max_overlap=0.3,
        blend="hard",
        flip=False,
    )
    background = np.zeros((40, 40, 3), np.uint8)
    taken = [[0.0, 0.0, 10.0, 10.0]]
    for seed in range(20):
        image, pasted = paste_onto(
            background, taken, [square], settings, np.random.default_rng(seed)
        )
        union = np.zeros((40, 40), bool)
        for _, mask in pasted:
            assert not (union & mask).any()  # no pixel belongs to two instances
            union |= mask
        assert ((image[..., 0] == 255) == union).all()  # what shows is what the masks say
        boxes = [[*np.argwhere(m).min(0)[::-1], 20, 20] for _, m in pasted]
        for box in boxes:
            assert shared_share([float(v) for v in box], taken[0]) <= 0.3


def test_a_feathered_cut_whose_mask_touches_its_edge_draws_no_dark_seam():
    """The feather's blur reaches past the cut, where the pasted pixels were zeros: a white
    digit on grey got a seam darker than either image (90 where both are 128 or more)."""
    mask = np.zeros((24, 24), bool)
    mask[0:22, 2:22] = True  # touches the cut's top edge, as a digit's mask does
    white = Instance("a", 1, None, np.full((24, 24, 3), 255, np.uint8), mask)
    settings = PasteSpec(
        backgrounds={"path": "x"}, instances=(1, 1), scale=(0.4, 0.4), blend="gaussian"
    )
    grey = np.full((60, 60, 3), 128, np.uint8)
    for seed in range(5):
        image, pasted = paste_onto(grey, [], [white], settings, np.random.default_rng(seed))
        assert pasted and image.min() >= 128


def test_a_composite_is_of_the_first_instance_still_seen():
    """Its class was its first pasted instance's, also where a later one covered it whole: an
    image of a banana whose only box was of an apple."""
    from augment.labels.paste import PasteItem, paste_record
    from augment.provenance import Provenance
    from augment.records import SourceImage
    from augment.taxonomy.concept import Concept

    covered = np.zeros((8, 8), bool)
    seen = np.zeros((8, 8), bool)
    seen[2:6, 2:6] = True
    banana, apple = Concept("banana", "banana", 1), Concept("apple", "apple", 2)
    pasted = [
        (Instance("b", 1, banana, np.zeros((4, 4, 3), np.uint8), covered), covered),
        (Instance("a", 2, apple, np.zeros((4, 4, 3), np.uint8), seen), seen),
    ]
    record = paste_record(
        PasteItem("p", "bg", 0, 0),
        SourceImage("bg", "bg.png", 8, 8),
        [],
        np.zeros((8, 8, 3), np.uint8),
        pasted,
        PasteSpec(backgrounds={"path": "x"}),
        0.0,
        Provenance("job", "hash", "model", None, None, "0"),
    )
    assert record["concept_name"] == "apple" and record["category_id"] == 2
    assert [box["category_id"] for box in record["boxes"]] == [2]


def test_bad_paste_input_fails_before_the_run_and_a_corrupt_background_is_named(tmp_path):
    job = tmp_path / "job.yaml"
    text = (REPO / "jobs" / "tiny" / "paste.yaml").read_text()
    job.write_text(text.replace("builtin:digits-canvases", str(tmp_path / "nowhere")))
    done = run_cli("run", str(job), "--out", str(tmp_path / "a"), "--distributor", "local")
    assert done.returncode == 2 and "paste.backgrounds.path" in error_line(done.stderr)
    assert not (tmp_path / "a").exists()
    job.write_text(text.replace("instances: [1, 3]", "instances: [0, 3]"))
    done = run_cli("run", str(job), "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "paste.instances" in error_line(done.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    job.write_text(text.replace("builtin:digits-canvases", str(empty)))
    done = run_cli("run", str(job), "--out", str(tmp_path / "c"))
    line = error_line(done.stderr)
    assert done.returncode == 2 and "paste.backgrounds.path" in line
    assert "source." not in line and "set paste.backgrounds.format to coco" in line
    job.write_text(text.replace("instances: [1, 3]", "instances: [1, 1000000000]"))  # hung
    done = run_cli("run", str(job), "--out", str(tmp_path / "e"))
    assert done.returncode == 2 and "1 <= min <= max <= 100" in error_line(done.stderr)
    with pytest.raises(SpecError, match="blend gaussian blurs the edge by feather pixels"):
        load_spec(REPO / "jobs" / "tiny" / "paste.yaml", {"paste.feather": 0})
    hard = {"paste.feather": 0, "paste.blend": "hard"}  # no feather: right for hard edges
    assert load_spec(REPO / "jobs" / "tiny" / "paste.yaml", hard).paste.feather == 0
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    for k in range(3):
        Image.new("RGB", (64, 48)).save(backgrounds / f"field{k}.png")
    (backgrounds / "broken.png").write_bytes(b"not a png")
    spec = tiny_paste_spec(tmp_path / "d", **{"paste.backgrounds.path": str(backgrounds)})
    result = run_job(spec, LOCAL)
    manifest = json.loads((tmp_path / "d" / "paste" / "manifest.json").read_text())
    assert manifest["counts"]["records"] == 6 and "broken.png" in manifest["failures"][0]["source"]
    assert result.outputs["paste"].is_dir()


@pytest.mark.slow
def test_the_paste_yolo_exports_train_one_epoch_offline(pasted, tmp_path, monkeypatch):
    data = pasted / "paste" / "yolo" / "data.yaml"
    assert train_yolo_one_epoch(data, tmp_path, monkeypatch, imgsz=96).is_file()
    assert list(data.parent.glob("*.cache"))  # ultralytics' own, which an export replaces
    export(pasted / "paste", ["yolo"])
    segments = export(pasted / "paste", ["yolo-seg"])["yolo-seg"]
    checked = 0
    for record in export_records(pasted / "paste"):  # each polygon fills its instance's mask
        labels = segments.parent / "labels" / image_file_name(record)
        lines = labels.with_suffix(".txt").read_text().splitlines()
        for line, box in zip(lines, record["boxes"], strict=True):
            if not box["rle"]:
                continue
            mask = decode_rle(box["rle"], record["height"], record["width"])
            points = np.array(line.split()[1:], np.float32).reshape(-1, 2)
            filled = np.zeros(mask.shape, np.uint8)
            scale = np.array([record["width"], record["height"]])
            cv2.fillPoly(filled, [np.round(points * scale).astype(np.int32)], 1)
            iou = (mask & filled.astype(bool)).sum() / (mask | filled.astype(bool)).sum()
            assert iou >= 0.7, (record["item_id"], iou)
            checked += 1
    assert checked
    model = "yolov8n-seg.yaml"
    assert train_yolo_one_epoch(segments, tmp_path / "seg", monkeypatch, 96, model).is_file()


def test_canvases_nothing_fits_on_are_exported_as_negatives_and_said(pasted, tmp_path, caplog):
    """At scale 1 no cut fits its background: those canvases had category None, and every
    export of the paste stopped on it, telling the user to rerun, which changed nothing."""
    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    result = paste(tiny_paste_spec(out, **{"paste.scale": [1.0, 1.0]}), force=True)
    assert result.pasted == 8 and result.instances == 0
    assert "paste: 8 of 8 canvases got no instance, kept as background-only negatives" in (
        caplog.text
    )
    coco = json.loads((out / "paste" / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 8 and {i["category_id"] for i in coco["images"]} == {None}
    assert coco["annotations"]  # the backgrounds' own digits
    assert len(list((out / "paste" / "yolo" / "labels").rglob("*.txt"))) == 8


def test_the_users_files_in_the_paste_folder_are_refused_not_deleted(pasted, tmp_path):
    """A paste made again replaces OUT/paste: `--force`, or a run after `run --limit`, deleted
    a user's notes and the benchmark results written there."""
    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    (out / "paste" / "bench").mkdir()
    (out / "paste" / "bench" / "results.parquet").write_bytes(b"mine")
    spec = tiny_paste_spec(out)
    with pytest.raises(OutputError, match=r"paste holds bench, which augment paste did not"):
        paste(spec, force=True)
    with pytest.raises(OutputError, match=r"paste holds bench, which augment paste did not"):
        run_job(spec, RunOptions(distributor="local", force=True))
    assert (out / "paste" / "bench" / "results.parquet").read_bytes() == b"mine"
    assert (out / "shards").is_dir()  # the run was refused before it cleared OUT


def test_a_background_object_pasted_over_entirely_loses_its_label(pasted, tmp_path):
    """With a large max_overlap, background digits hidden under pasted ones kept their boxes:
    the detector was taught the pasted pixels as the hidden class."""
    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    crowded = {"paste.max_overlap": 1.0, "paste.scale": [0.6, 0.8], "paste.instances": [3, 3]}
    spec = tiny_paste_spec(out, **crowded)
    paste(spec, force=True)
    kept = 0
    for record in export_records(out / "paste"):
        covered = np.zeros((record["height"], record["width"]), bool)
        for box in record["boxes"]:
            if box["rle"]:
                covered |= decode_rle(box["rle"], record["height"], record["width"])
        background = [box for box in record["boxes"] if box["labeller"] is None]
        for box in background:
            x, y, w, h = (int(round(v)) for v in box["bbox"])
            assert not covered[y : y + h, x : x + w].all(), record["item_id"]
        kept += len(background)
    backgrounds = paste_backgrounds(spec).images
    assert kept < sum(len(b.boxes) for b in backgrounds) * spec.paste.images_per_background


def test_background_boxes_follow_a_file_resized_in_proportion_and_are_clipped(pasted, tmp_path):
    """A COCO folder whose files were halved (annotations kept at 96 px, which sources accept,
    as img2img scales them) gave boxes off the canvas, and a box reaching past the edge was
    exported whole: ultralytics called 14 of 16 canvases corrupt."""
    spec = tiny_paste_spec(pasted)
    source = Path(spec.paths.backgrounds)
    coco = json.loads((source / "annotations.json").read_text())
    coco["images"] = coco["images"][:4]
    kept = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    edge = coco["annotations"][0]
    edge["bbox"] = [90, edge["bbox"][1], 17, edge["bbox"][3]]  # 6 of its 17 px on the canvas
    halved = tmp_path / "halved"
    (halved / "images").mkdir(parents=True)
    for image in coco["images"]:
        with Image.open(source / "images" / image["file_name"]) as file:
            file.resize((48, 48)).save(halved / "images" / image["file_name"])
    (halved / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    paste(tiny_paste_spec(out, **{"paste.backgrounds.path": str(halved)}), force=True)

    scaled = [  # each annotation at half size, the edge one cut at the canvas
        [x / 2, y / 2, min(w, 96 - x) / 2, h / 2]
        for x, y, w, h in (a["bbox"] for a in coco["annotations"])
    ]
    records = list(export_records(out / "paste"))
    assert records and all((r["width"], r["height"]) == (48, 48) for r in records)
    own = []
    for record in records:
        for box in record["boxes"]:
            x, y, w, h = box["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48 and w > 0 and h > 0
        own += [list(b["bbox"]) for b in record["boxes"] if b["labeller"] is None]
    assert own and all(box in scaled for box in own)
    assert scaled[0] in own and scaled[0][2] == 3.0


def test_filter_on_a_paste_folder_says_it_is_one_and_names_the_run_folder(pasted, capsys):
    """OUT/paste has a manifest.json, so "holds no finished run (job.yaml and manifest.json)"
    sent the user looking for a file that was there."""
    before = {p.name: p.read_bytes() for p in (pasted / "paste" / "shards").iterdir()}
    result = run_cli("filter", str(pasted / "paste"), "--min-concept-score", "0.9")
    assert result.returncode == 2
    assert error_line(result.stderr) == (
        f"error: {pasted}/paste is a paste folder (the canvases `augment paste` made from a "
        f"run's renders), not a run: filter the run folder, {pasted}; then `augment paste JOB "
        f"--out {pasted}` pastes again from the renders the filter keeps"
    )
    assert {p.name: p.read_bytes() for p in (pasted / "paste" / "shards").iterdir()} == before


def test_a_filter_that_changes_flags_says_the_pasted_canvases_are_out_of_date(pasted, tmp_path):
    """The canvases were pasted from the renders the old flags kept: after a filter that
    changed flags, OUT/paste is stale, and the user is told how to paste again."""
    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    shard = sorted((out / "shards").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    flags = table["filtered"].to_pylist()
    flags[0] = True  # as an earlier, stricter filter left it
    index = table.schema.get_field_index("filtered")
    pq.write_table(table.set_column(index, "filtered", pa.array(flags)), shard)
    result = run_cli("filter", str(out))
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: {out}/paste holds canvases pasted from the renders the earlier flags kept; "
        f"`augment paste JOB --out {out}` pastes again from those this filter keeps"
    ) in " ".join(result.stderr.split())
    again = run_cli("filter", str(out))  # nothing changes now: nothing to say
    assert again.returncode == 0 and "warning" not in again.stderr
    job = tmp_path / "paste.yaml"  # the job as it was run, whose output.dir is elsewhere
    shutil.copy(out / "job.yaml", job)
    again = run_cli("paste", str(job), "--out", str(out), "--force")  # as the warning says
    assert again.returncode == 0, again.stderr
    assert "pasted 8 images" in again.stdout


def test_a_paste_made_again_makes_the_exports_and_gallery_of_it_again_as_they_were(
    pasted, tmp_path, caplog
):
    """Pasting again from other renders starts from an empty OUT/paste: an ImageFolder export
    an `augment export` added (with flagged images) and an `augment view` gallery were lost.
    The ImageFolder export of composites says why a class has no folder: not "every one
    flagged" where none is, but composites showing several classes, which it leaves out."""
    from augment.api import view

    out = tmp_path / "out"
    shutil.copytree(pasted, out)
    canvases = export_records(out / "paste", include_flagged=True)
    several = sum(
        len({b["category_id"] for b in r["boxes"]} | {r["category_id"]}) > 1 for r in canvases
    )
    assert several > 0
    export(out / "paste", ["imagefolder"], include_flagged=True)
    assert f"imagefolder: {several} paste composite" in caplog.text
    assert "is flagged" not in caplog.text
    view(out / "paste", per_concept=3)

    marker = out / "paste" / "paste.json"
    saved = json.loads(marker.read_text())
    marker.write_text(json.dumps({**saved, "instances": "other renders"}))
    result = paste(tiny_paste_spec(out))
    assert result.pasted == 8 and "pasting again" in caplog.text
    settings = json.loads((out / "paste" / "imagefolder" / ".augment-export.json").read_text())
    assert settings["include_flagged"] is True
    assert result.outputs["imagefolder"] == out / "paste" / "imagefolder"
    gallery = json.loads((out / "paste" / "gallery" / ".augment-gallery.json").read_text())
    assert gallery["per_concept"] == 3 and result.outputs["gallery"].is_file()

    paste(tiny_paste_spec(out), force=True)  # starts over: the job's own formats alone
    assert not (out / "paste" / "imagefolder").exists()
    assert not (out / "paste" / "gallery").exists()


def test_a_run_with_nothing_to_paste_says_which_flags_left_it_empty(tmp_path):
    """Every render flagged not_found (the detector found nothing) was told as masks to fix:
    "check segment: ... with augment view", a gallery that shows no mask."""
    from augment.errors import OutputError
    from augment.labels.paste import load_instances
    from tests.conftest import write_fake_run

    images = np.zeros((3, 8, 8, 3), np.uint8)
    run = write_fake_run(tmp_path, images, np.array([0, 1, 2]), {"not_found": [True] * 3})
    with pytest.raises(OutputError, match="of its 3 renders, 3 not_found; the labels: detector"):
        load_instances(run, [])


def test_nothing_is_pasted_smaller_than_a_few_pixels():
    """On a 7 x 5 background, objects of one pixel were pasted and labelled."""
    from augment.labels.paste import MIN_PASTED_SIDE

    square = Instance("a", 1, None, np.full((10, 10, 3), 255, np.uint8), np.ones((10, 10), bool))
    settings = PasteSpec(backgrounds={"path": "x"}, instances=(3, 3), scale=(0.1, 0.3))
    for seed in range(10):
        tiny = np.zeros((5, 7, 3), np.uint8)
        _, pasted = paste_onto(tiny, [], [square], settings, np.random.default_rng(seed))
        assert not pasted
        roomy = np.zeros((60, 60, 3), np.uint8)
        _, pasted = paste_onto(roomy, [], [square], settings, np.random.default_rng(seed))
        assert pasted and all(
            min(np.ptp(np.argwhere(m), axis=0)) + 1 >= MIN_PASTED_SIDE for _, m in pasted
        )


def test_a_coco_backgrounds_polygons_and_rle_are_read_as_masks():
    """Paste kept a background object's box and dropped its mask: in OUT/paste every real
    object was a rectangle, which a segmentation model then learns."""
    from augment.labels.segment import decode_rle, encode_rle
    from augment.sources import coco_mask_counts

    triangle = [[2.0, 2.0, 12.0, 2.0, 2.0, 12.0]]
    mask = decode_rle(coco_mask_counts(triangle, (16, 16)), 16, 16)
    assert 40 <= mask.sum() <= 70 and mask[3, 3] and not mask[11, 11]
    square = np.zeros((16, 16), bool)
    square[4:8, 4:8] = True
    rle = {"size": [16, 16], "counts": encode_rle(square)}
    assert decode_rle(coco_mask_counts(rle, (16, 16)), 16, 16).sum() == 16
    assert coco_mask_counts(rle, (32, 32)) is None  # another image's size: the box alone
    assert coco_mask_counts([], (16, 16)) is None
