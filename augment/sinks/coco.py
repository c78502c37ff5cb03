"""COCO export: annotations.json + images/, derived from the shards.

Ids start at 1, the file has the `info` key pycocotools expects, and categories come from the
run's taxonomy (COCO ids are preserved for COCO concepts). Each image entry also carries the
concept it was rendered for (`category_id`, `item_id`): txt2img images have no boxes, and that
image-level label is what a classifier trains on.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from augment.sinks.parquet import read_records
from augment.taxonomy.listfile import slugify


def image_file_name(record: dict) -> str:
    """A flat, safe file name: sanitized concept name + item_id (never leaves the folder)."""
    return f"{slugify(record['concept_name'])}_{record['item_id']}.png"


def export_coco(out_dir: Path, categories: list[dict]) -> Path:
    """Write OUT/coco/annotations.json and OUT/coco/images/ from OUT/shards."""
    out_dir = Path(out_dir)
    coco_dir = out_dir / "coco"
    images_dir = coco_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, record in enumerate(read_records(out_dir / "shards"), start=1):
        file_name = image_file_name(record)
        (images_dir / file_name).write_bytes(record["image"]["bytes"])
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": record["width"],
                "height": record["height"],
                "item_id": record["item_id"],
                "category_id": record["category_id"],
            }
        )
        for box in record["boxes"] or []:
            x, y, w, h = box["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": box["category_id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": box["segmentation"] or [],
                }
            )
    document = {
        "info": {
            "description": f"augment synthetic images from {out_dir.name}",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = coco_dir / "annotations.json"
    tmp = path.with_name(".annotations.json.tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(path)
    return path
