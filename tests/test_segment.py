"""The segment stage: masks and tight boxes for rendered objects, stored as COCO RLE, flagged when
implausible, exported for pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from augment.config import SegmentSpec, load_spec
from augment.digits.data import load_digit_images
from augment.errors import ModelError, SpecError
from augment.job import RunOptions, run_job
from augment.labels import ink_box
from augment.labels.segment import Segmenter, decode_rle, threshold_mask
from augment.sinks import export
from tests.conftest import TINY_JOB, error_line, run_cli

LOCAL = RunOptions(distributor="local")


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def pasted_digits(count: int, seed: int = 0, light: bool = False):
    """Real digit scans pasted, scaled, at random places on 64 px canvases: (canvas, true box)."""
    images, _ = load_digit_images(32)
    rng = np.random.default_rng(seed)
    out = []
    for row in rng.choice(len(images), count, replace=False):
        side = int(rng.integers(20, 40))
        patch = np.asarray(Image.fromarray(images[row]).resize((side, side), Image.BICUBIC))
        x, y = (int(v) for v in rng.integers(0, 64 - side, 2))
        canvas = np.zeros((64, 64, 3), np.uint8)
        canvas[y : y + side, x : x + side] = patch
        bx, by, bw, bh = ink_box(patch)
        if light:  # dark ink on white paper
            canvas = 255 - canvas
        out.append((Image.fromarray(canvas), [x + bx, y + by, bw, bh]))
    return out


@pytest.mark.parametrize("light", [False, True])
def test_threshold_boxes_match_the_pasted_truth(light):
    """On canvases where the truth is known (the canvas builder's ink box, pixels above 48), the
    default threshold's boxes reach IoU 0.9 for >= 99 % (dark or light backgrounds alike: the
    background level is read from the border)."""
    segmenter = Segmenter(SegmentSpec(method="threshold"))
    cases = pasted_digits(300, seed=1, light=light)
    records = [
        {
            "image": {"bytes": png(canvas)},
            "concept_name": "seven",
            "category_id": 7,
            "boxes": [],
        }
        for canvas, _ in cases
    ]
    segmented = segmenter(records)
    scores = [
        iou(r["boxes"][0]["bbox"], truth) for r, (_, truth) in zip(segmented, cases, strict=True)
    ]
    assert np.mean(np.array(scores) >= 0.9) >= 0.99
    for record in segmented:
        box = record["boxes"][0]
        mask = decode_rle(box["rle"], 64, 64)
        assert mask.sum() == box["area"] and abs(mask.mean() - record["mask_area"]) < 1e-9
        assert box["labeller"] == "threshold" and box["category_id"] == 7
        assert not record["bad_mask"]


def png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_implausible_masks_are_flagged_not_dropped():
    segmenter = Segmenter(SegmentSpec(method="threshold"))
    blank = Image.new("RGB", (32, 32))
    full = Image.new("RGB", (64, 64))
    full.paste((255, 255, 255), (1, 1, 63, 63))  # all but a dark 1 px frame (the background)
    cut = np.zeros((32, 32, 3), np.uint8)
    cut[:, :20] = 255  # an object running off three sides
    ok = np.zeros((32, 32, 3), np.uint8)
    ok[10:20, 12:22] = 255
    records = [
        {"image": {"bytes": png(image)}, "concept_name": "x", "category_id": 1, "boxes": []}
        for image in (blank, full, Image.fromarray(cut), Image.fromarray(ok))
    ]
    out = segmenter(records)
    assert [r["bad_mask"] for r in out] == [True, True, True, False]
    assert out[0]["boxes"] == [] and out[0]["mask_area"] == 0.0  # empty: no box, still a record
    assert out[3]["boxes"][0]["bbox"] == [12.0, 10.0, 10.0, 10.0]
    assert threshold_mask(Image.fromarray(ok)).sum() == 100


@pytest.mark.parametrize("method", ["threshold", "sam"])
def test_a_detected_object_keeps_one_box_which_gains_its_mask(tmp_path, method, model_cache):
    """With labels: and segment:, the mask goes to the detector's box it was prompted from (box,
    score and labeller kept), not to a second instance: the COCO export has one annotation per
    object, and the export's masks as predictions score AP 1.0 against it (with the duplicate
    box left unmatched: 0.66). An image the detector found nothing in gains the segmenter's own
    box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from augment.registry import resolve
    from augment.sinks.coco import export_coco

    model = None if method == "threshold" else str(resolve("model", "tiny-sam", "test"))
    spec = SegmentSpec(method=method, model=model, min_area=0, max_area=1, max_border=1)
    segmenter = Segmenter(spec, model)
    pixels = np.zeros((48, 48, 3), np.uint8)
    pixels[14:26, 10:26] = 255  # the object: x 10, y 14, 16 x 12
    detected = {
        "category_id": 1,
        "bbox": [10.0, 14.0, 16.0, 12.0],
        "segmentation": [],
        "score": 0.8,
        "labeller": "owlv2",
    }
    records = [
        {
            "item_id": f"i{k}",
            "concept_name": "square",
            "category_id": 1,
            "width": 48,
            "height": 48,
            "image": {"bytes": png(Image.fromarray(pixels)), "path": None},
            "boxes": boxes,
        }
        for k, boxes in enumerate([[detected], []])
    ]
    found, alone = segmenter(records)
    assert len(found["boxes"]) == 1
    box = found["boxes"][0]
    assert {k: box[k] for k in detected} == detected
    assert box["area"] == decode_rle(box["rle"], 48, 48).sum() > 0
    if method == "threshold":
        assert box["area"] == 16 * 12
    assert [b["labeller"] for b in alone["boxes"]] == [method]  # no detector box to give it to
    coco_file = export_coco(
        tmp_path / "coco", [{"id": 1, "name": "square", "supercategory": ""}], [found, alone]
    )
    annotations = json.loads(coco_file.read_text())["annotations"]
    assert [a["image_id"] for a in annotations] == [1, 2]
    assert all(isinstance(a["segmentation"], dict) for a in annotations)
    truth = COCO(str(coco_file))
    masks = [{**a, "score": 1.0} for a in annotations if isinstance(a["segmentation"], dict)]
    evaluation = COCOeval(truth, truth.loadRes(masks), "segm")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_sam_keeps_the_pixels_whose_mask_logit_exceeds_the_threshold(model_cache):
    """segment.threshold is SAM's mask logit bound (its description said "sam: unused"): any
    number, lower keeping more pixels, so a negative one is accepted."""
    from augment.registry import resolve

    model = str(resolve("model", "tiny-sam", "test"))
    image = Image.new("RGB", (32, 32))
    covered = []
    for threshold in (-1e4, None, 1e4):
        spec = SegmentSpec(method="sam", model=model, threshold=threshold)
        [(mask, _)] = Segmenter(spec, model).masks([image], ["x"])
        covered.append(int(mask.sum()))
    assert covered[0] == 32 * 32 >= covered[1] >= covered[2] == 0


def segmented_job(tmp_path, name: str, segment: str) -> object:
    job = tmp_path / f"{name}.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / name)) + segment)
    return load_spec(job)


@pytest.mark.parametrize("method", ["threshold", "clipseg", "sam"])
def test_a_run_stores_masks_and_the_coco_export_evaluates_as_segm(tmp_path, method):
    """Each method runs in the worker; COCO export carries RLE that COCOeval reads as segm."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model = "" if method == "threshold" else f"\n  model: builtin:tiny-{method}"
    limits = "\n  max_border: 1\n  min_area: 0\n  max_area: 1\n"  # random models: keep all
    spec = segmented_job(tmp_path, method, f"segment:\n  method: {method}{model}{limits}")
    run_job(spec, LOCAL)
    frame = pd.read_parquet(tmp_path / method / "shards")
    assert frame["mask_area"].between(0, 1).all()
    with_masks = frame[frame["boxes"].map(len) > 0]
    assert len(with_masks) > 0
    for _, row in with_masks.iterrows():
        box = row["boxes"][0]
        assert box["labeller"] == method and box["category_id"] == row["category_id"]
        assert decode_rle(box["rle"], row["height"], row["width"]).sum() == box["area"] > 0
        if method != "threshold":
            assert box["score"] is not None
    coco_file = export(tmp_path / method, ["coco"])["coco"]
    annotations = json.loads(coco_file.read_text())
    assert all(isinstance(a["segmentation"], dict) for a in annotations["annotations"])
    truth = COCO(str(coco_file))
    detections = truth.loadRes([{**a, "score": 1.0} for a in annotations["annotations"]])
    for kind in ("bbox", "segm"):
        evaluation = COCOeval(truth, detections, kind)
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0)  # the truth scored against itself


def test_bad_segment_settings_fail_before_the_run(tmp_path):
    with pytest.raises(SpecError, match="needs segment.model"):
        segmented_job(tmp_path, "a", "segment:\n  method: sam\n")
    spec = segmented_job(tmp_path, "b", "segment:\n  method: sam\n  model: builtin:tiny-clipseg\n")
    with pytest.raises(ModelError, match="a clipseg model, not sam"):
        run_job(spec, LOCAL)
    spec = segmented_job(tmp_path, "c", "segment:\n  method: clipseg\n  model: nowhere/at-all\n")
    with pytest.raises(ModelError, match="not found"):
        run_job(spec, LOCAL)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    job = tmp_path / "d.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "d")) + "segment:\n  method: sam\n")
    done = run_cli("run", str(job))
    assert done.returncode == 2 and "needs segment.model" in error_line(done.stderr)
    job = tmp_path / "e.yaml"  # grey levels only reach 255: every image was flagged bad_mask
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "e")) + "segment: {threshold: 300}\n")
    done = run_cli("run", str(job), "--distributor", "local")
    line = error_line(done.stderr)
    assert done.returncode == 2 and "segment.threshold 300" in line and "0 to 254" in line
    assert not (tmp_path / "e").exists()


def test_a_yolo_seg_polygon_runs_along_the_pixels_outer_edges():
    """ultralytics takes a segment label's box from its polygon's extent: traced through the
    edge pixels' positions, the pixels 40 to 59 ended at 59, and every box it trained on was a
    pixel short (IoU 0.9 with COCO's), while the benchmark scored against COCO's."""
    from augment.sinks.yolo import yolo_instance_line

    mask = np.zeros((100, 100), bool)
    mask[10:30, 40:60] = True
    mask[50:53, 5:7] = True  # a second part, joined to the first
    values = [float(v) for v in yolo_instance_line(0, [5, 10, 55, 43], mask, 100, 100).split()[1:]]
    xs, ys = np.array(values[0::2]) * 100, np.array(values[1::2]) * 100
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((5, 60, 10, 53))
    single = np.zeros((8, 8), bool)
    single[3, 3] = True  # one pixel: a square, not the box's fallback
    assert yolo_instance_line(0, [3, 3, 1, 1], single, 8, 8) == (
        "0 0.375000 0.375000 0.375000 0.500000 0.500000 0.500000 0.500000 0.375000"
    )


def test_a_yolo_seg_polygon_leaves_a_masks_holes_out():
    """Traced by its outer outline alone, a 0 (a ring) was exported as a filled blob (IoU 0.67
    with its mask), which a -seg model then learnt and COCOeval scored against the ring."""
    from pycocotools import mask as coco_mask

    from augment.labels.segment import mask_polygon

    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[12:28, 12:28] = False
    ring[2:4, 2:4] = True  # a second part too
    polygon = mask_polygon(ring)
    filled = coco_mask.decode(
        coco_mask.merge(coco_mask.frPyObjects([polygon.ravel().tolist()], 40, 40))
    )
    filled = filled.astype(bool)
    assert not filled[20, 20]  # the hole
    assert (filled & ring).sum() / (filled | ring).sum() > 0.98


def test_a_mask_given_to_a_detectors_box_stays_inside_it():
    """A threshold or clipseg mask of the whole image was given to a detector's box as it
    was: annotations whose mask and area lay far outside their box (area 407 for a box of
    1.6 x 1.6 pixels)."""
    spec = SegmentSpec(method="threshold", min_area=0, max_area=1, max_border=1)
    pixels = np.zeros((48, 48, 3), np.uint8)
    pixels[14:26, 10:26] = 255  # the object; the detector boxed its left half
    box = {"category_id": 1, "bbox": [10.0, 14.0, 8.0, 12.0], "score": 0.8, "labeller": "owlv2"}
    record = {
        "item_id": "i",
        "concept_name": "square",
        "category_id": 1,
        "width": 48,
        "height": 48,
        "image": {"bytes": png(Image.fromarray(pixels)), "path": None},
        "boxes": [box],
    }
    (found,) = Segmenter(spec, None)([record])
    (boxed,) = found["boxes"]
    mask = decode_rle(boxed["rle"], 48, 48)
    assert boxed["bbox"] == box["bbox"] and boxed["area"] == mask.sum() == 8 * 12
    assert not mask[:, 18:].any()
