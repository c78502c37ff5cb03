"""Open-vocabulary auto-labels: a zero-shot detector boxes each rendered image in the worker."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from augment.config import load_spec
from augment.job import RunOptions, run_job
from augment.labels.autolabel import concept_of_phrase
from tests.conftest import TINY_JOB, error_line, run_cli

LOCAL = RunOptions(distributor="local")


def labelled_job(tmp_path, name: str, section: str):
    job = tmp_path / f"{name}.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / name)) + section)
    return job


@pytest.mark.parametrize("detector", ["owlv2", "grounding-dino"])
def test_each_detector_writes_scored_boxes_of_the_job_concepts(tmp_path, detector):
    job = labelled_job(
        tmp_path,
        detector,
        f"labels:\n  detector: builtin:tiny-{detector}\n  threshold: 0.0\n  concepts: all\n",
    )
    run_job(load_spec(job), LOCAL)
    frame = pd.read_parquet(tmp_path / detector / "shards")
    categories = set(frame["category_id"])
    boxes = [b for row in frame["boxes"] for b in row]
    assert boxes, "a random detector at threshold 0 still boxes something"
    for box in boxes:
        assert box["labeller"] == detector and 0.0 <= box["score"] <= 1.0
        assert box["category_id"] in categories
        x, y, w, h = box["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 32 and y + h <= 32
    for _, row in frame.iterrows():  # not_found: no box of the image's own concept
        own = any(b["category_id"] == row["category_id"] for b in row["boxes"])
        assert row["not_found"] == (not own)


@pytest.mark.parametrize(
    ("detector", "concepts"),
    [("grounding-dino", "own"), ("grounding-dino", "all"), ("owlv2", "all")],
)
def test_concepts_of_one_name_keep_their_own_boxes(tmp_path, detector, concepts):
    """Two concepts named alike (WordNet's two synsets of one lemma): a detector reads only the
    name, so each image's boxes of that name are its own concept's (every one_a image was
    flagged not_found, its boxes given one_b's category)."""
    listing = tmp_path / "ones.yaml"
    listing.write_text(
        "concepts:\n"
        "  - {id: one_a, name: one, definition: a single stroke}\n"
        "  - {id: one_b, name: one, definition: the first number}\n"
    )
    job = TINY_JOB.replace("source: digits", f"source: {listing}")
    job = job.replace("digit {name}", "digit {name} ({definition})")
    job = job.replace("images_per_concept: 3", "images_per_concept: 8")  # owlv2 boxes a few
    path = tmp_path / "job.yaml"
    path.write_text(
        job.replace("OUT_DIR", str(tmp_path / "out"))
        + f"labels:\n  detector: builtin:tiny-{detector}\n  threshold: 0.0\n"
        f"  concepts: {concepts}\n"
    )
    run_job(load_spec(path), LOCAL)
    frame = pd.read_parquet(tmp_path / "out" / "shards")
    assert sorted(set(frame["concept_id"])) == ["one_a", "one_b"]
    assert frame["category_id"].nunique() == 2
    for _, row in frame.iterrows():
        found = {b["category_id"] for b in row["boxes"]}
        assert found <= {row["category_id"]} and row["not_found"] == (not found)
    assert frame["boxes"].map(len).gt(0).any()
    if detector == "grounding-dino":  # the random one boxes every image at threshold 0
        assert not frame["not_found"].any()


def test_images_without_their_concept_are_flagged_and_left_out_of_exports(tmp_path):
    job = labelled_job(
        tmp_path, "strict", "labels:\n  detector: builtin:tiny-owlv2\n  threshold: 1.0\n"
    )
    result = run_job(load_spec(job), LOCAL)
    frame = pd.read_parquet(tmp_path / "strict" / "shards")
    assert frame["not_found"].all() and frame["boxes"].map(len).eq(0).all()
    manifest = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert manifest["counts"]["not_found"] == len(frame) == result.flagged
    coco = json.loads((tmp_path / "strict" / "coco" / "annotations.json").read_text())
    assert coco["images"] == []


def test_sam_masks_the_detector_box_it_was_prompted_with(tmp_path, monkeypatch):
    """In a run with labels: and segment: sam, SAM is prompted with the detector's best box of
    the image's own concept, and its mask goes to that box: each exported object is one COCO
    annotation (the mask was a second instance of the same object, exported twice)."""
    from augment.labels.segment import Segmenter

    prompted = []
    sam = Segmenter._sam

    def spy(self, images, prompts):
        prompted.extend(prompts)
        return sam(self, images, prompts)

    monkeypatch.setattr(Segmenter, "_sam", spy)
    section = (
        "labels:\n  detector: builtin:tiny-grounding-dino\n  threshold: 0.0\n"
        "segment:\n  method: sam\n  model: builtin:tiny-sam\n  max_border: 1\n  max_area: 1\n"
        "  min_area: 0\n  threshold: -10000\n"  # the random SAM's mask: all, cut to the box
    )
    run_job(load_spec(labelled_job(tmp_path, "both", section)), LOCAL)
    frame = pd.read_parquet(tmp_path / "both" / "shards")
    coco = json.loads((tmp_path / "both" / "coco" / "annotations.json").read_text())
    images = {image["item_id"]: image["id"] for image in coco["images"]}
    assert len(prompted) == len(frame) == len(images)
    for _, row in frame.iterrows():
        boxes = list(row["boxes"])
        assert boxes and all(b["labeller"] == "grounding-dino" for b in boxes)
        best = max(boxes, key=lambda b: b["score"])  # own concepts only: all of them own
        assert list(best["bbox"]) in [list(p) for p in prompted]
        assert [b["rle"] is not None for b in boxes] == [b is best for b in boxes]
        exported = [a for a in coco["annotations"] if a["image_id"] == images[row["item_id"]]]
        assert len(exported) == len(boxes)
        masked = [a for a in exported if isinstance(a["segmentation"], dict)]
        assert len(masked) == 1
        assert masked[0]["bbox"] == list(best["bbox"]) and masked[0]["score"] == best["score"]
        assert masked[0]["labeller"] == "grounding-dino"


def test_a_phrase_maps_to_the_concept_it_names():
    names = ["apple", "pineapple", "dog"]
    assert concept_of_phrase("a pineapple", names) == 1
    assert concept_of_phrase("dog", names) == 2
    assert concept_of_phrase("[UNK]", names) is None


def test_a_detector_of_the_wrong_kind_or_missing_stops_the_run(tmp_path):
    job = labelled_job(tmp_path, "wrong", "labels:\n  detector: builtin:tiny-sam\n")
    done = run_cli("run", str(job), "--distributor", "local")
    line = error_line(done.stderr)
    assert done.returncode == 2 and "labels.detector" in line and "not owlv2" in line
    job = labelled_job(tmp_path, "missing", "labels:\n  detector: models/none\n")
    done = run_cli("run", str(job), "--distributor", "local")
    assert done.returncode == 2 and "not found" in error_line(done.stderr)
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "missing").exists()


def test_owlv2_labels_a_batch_of_concepts_whose_names_differ_in_length(tmp_path):
    """With concepts: own, the default (jobs/coco-txt2img-labelled.yaml), a batch of "car" and
    "bicycle" images stopped the run: each image's queries were padded to its own longest."""
    listing = tmp_path / "vehicles.yaml"
    listing.write_text("concepts:\n  - car\n  - bicycle built for two\n")
    job = TINY_JOB.replace("source: digits", f"source: {listing}")
    path = tmp_path / "job.yaml"
    path.write_text(
        job.replace("OUT_DIR", str(tmp_path / "out"))
        + "labels:\n  detector: builtin:tiny-owlv2\n  threshold: 0.0\n  concepts: own\n"
    )
    result = run_job(load_spec(path), LOCAL)
    assert (result.rendered, result.failed) == (6, 0)
