"""COCO export: OUT/coco/annotations.json + OUT/coco/images/.

Ids start at 1, the file has the `info` key pycocotools expects, and categories keep the
taxonomy's ids (COCO ids for COCO concepts). Each image entry also carries the concept it was
rendered for (`category_id`, `item_id`): txt2img images have no boxes, and that image-level
label is what a classifier trains on. A box with a mask (`segment:`) has it as compressed RLE
in `segmentation`, which pycocotools' `COCOeval(..., "segm")` reads; a box without a mask has
its rectangle there, marked `"mask": false`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from augment.records import FLAGS
from augment.sinks.rows import category_names, image_file_name


def annotation(box: dict, record: dict) -> dict:
    """A record box as a COCO annotation: a mask as RLE (its area the mask's pixels), else the
    polygons it carries, else its rectangle as a polygon marked `"mask": false` (so that
    `COCOeval(..., "segm")` runs on files that mix boxes and masks)."""
    x, y, w, h = box["bbox"]
    entry = {
        "category_id": box["category_id"],
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": 0,
        "segmentation": box["segmentation"] or [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }
    if not box["segmentation"] and not box.get("rle"):
        entry["mask"] = False
    if box.get("rle"):
        size = [record["height"], record["width"]]
        entry.update(area=box["area"], segmentation={"size": size, "counts": box["rle"]})
    if box.get("score") is not None:
        entry["score"] = box["score"]
    if box.get("labeller"):
        entry["labeller"] = box["labeller"]
    return entry


def export_coco(coco_dir: Path, categories: list[dict], records: Iterable[dict]) -> Path:
    images_dir = coco_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    models: dict[tuple, int] = {}  # (model, hash, licence) -> its COCO licence id
    names = category_names(categories)
    for image_id, record in enumerate(records, start=1):
        file_name = image_file_name(record)
        (images_dir / file_name).write_bytes(record["image"]["bytes"])
        model = (record.get("model"), record.get("model_hash"), record.get("license"))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": record["width"],
                "height": record["height"],
                "item_id": record["item_id"],
                "category_id": record["category_id"],
                "license": models.setdefault(model, len(models) + 1),
                "synthetic": True,
                "model": model[0],
                "model_hash": model[1],
                # an --include-flagged export says which are flagged, and why
                **({"flags": flags} if (flags := [f for f in FLAGS if record.get(f)]) else {}),
            }
        )
        for box in record["boxes"] or []:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, **annotation(box, record)}
            )
    document = {
        "info": {
            "description": "augment synthetic images: every image was generated, or composed "
            "of generated instances pasted on a background that its PNG's text chunks name",
            "synthetic": True,
            "models": [{"name": m[0], "hash": m[1], "license": m[2]} for m in models],
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "licenses": [
            {"id": number, "name": m[2] or f"unknown: the licence of {m[0]}", "url": ""}
            for m, number in models.items()
        ],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c["id"], "name": names[c["id"]], "supercategory": c["supercategory"]}
            for c in categories
        ],
    }
    path = coco_dir / "annotations.json"
    path.write_text(json.dumps(document))
    return path
