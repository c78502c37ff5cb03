"""The digits detection world: digits on 96 px canvases, with boxes.

Real canvases come from real digits (the classifier's pool for training, the held-out test
split for validation) and are written as a COCO dataset; synthetic canvases come from the
digits an `augment run` generated and are written as an `augment` output folder (shards with
boxes + manifest), so the same exports (YOLO) and benchmarks read them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from augment.errors import at_least
from augment.labels import Canvas, compose_canvases
from augment.sinks import export_records, run_categories
from augment.sinks.parquet import write_shard
from augment.taxonomy.listfile import slugify

CANVAS_SIZE = 96


def digit_categories() -> list[dict]:
    from augment.digits.data import DIGIT_NAMES

    return [{"id": i + 1, "name": n, "supercategory": "digit"} for i, n in enumerate(DIGIT_NAMES)]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_coco(canvases: list[Canvas], folder: Path, first_id: int = 1) -> Path:
    """COCO annotations.json + images/<id>.png (numeric names: detectors map ids from them)."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, canvas in enumerate(canvases, start=first_id):
        (images_dir / f"{image_id}.png").write_bytes(png_bytes(canvas.pixels))
        height, width = canvas.pixels.shape[:2]
        images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height}
        )
        for category_id, (x, y, w, h) in canvas.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
    document = {
        "info": {"description": "digits on canvases (scikit-learn digits, real scans)"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": digit_categories(),
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(document))
    return path


def real_canvases(
    folder: Path, train_count: int = 300, val_count: int = 150, seed: int = 0
) -> Path:
    """OUT/{train,val}/annotations.json from real digits: pool -> train, test -> val."""
    at_least("train canvases", train_count, 1)
    at_least("val canvases", val_count, 1)
    from augment.digits.data import digit_splits, load_digit_images

    images, labels = load_digit_images(32)
    splits = digit_splits()
    for name, split, count, offset in (
        ("train", "pool", train_count, 0),
        ("val", "test", val_count, 1),
    ):
        rows = splits[split]
        canvases = compose_canvases(
            images[rows],
            labels[rows] + 1,
            [f"digits-{i}" for i in rows],
            count,
            CANVAS_SIZE,
            seed=seed + offset,
        )
        write_coco(canvases, folder / name)
    return folder


def synthetic_canvases(run_dir: Path, out_dir: Path, count: int, seed: int = 0) -> Path:
    """Canvases from a run's generated digits, written as an augment output folder."""
    at_least("synthetic canvases (--count)", count, 1)
    categories = run_categories(run_dir)
    by_name = {slugify(c["name"]): c["id"] for c in categories}
    objects, category_ids, ids = [], [], []
    for record in export_records(run_dir):
        objects.append(np.asarray(Image.open(io.BytesIO(record["image"]["bytes"])).convert("RGB")))
        category_ids.append(by_name[slugify(record["concept_name"])])
        ids.append(record["item_id"])
    canvases = compose_canvases(
        np.stack(objects), np.array(category_ids), ids, count, CANVAS_SIZE, seed=seed
    )
    records = []
    for index, canvas in enumerate(canvases):
        item_id = f"canvas{index:05d}"
        first = canvas.boxes[0][0] if canvas.boxes else categories[0]["id"]
        records.append(
            {
                "item_id": item_id,
                "concept_id": "canvas",
                "concept_name": "canvas",
                "category_id": first,
                "prompt": None,
                "mode": "canvas",
                "source_image_id": ",".join(canvas.sources),
                "width": CANVAS_SIZE,
                "height": CANVAS_SIZE,
                "boxes": [
                    {"category_id": c, "bbox": box, "segmentation": []} for c, box in canvas.boxes
                ],
                "image": {"bytes": png_bytes(canvas.pixels), "path": f"{item_id}.png"},
                "black": False,
                "nan": False,
                "nsfw": False,
                "filtered": False,
            }
        )
    write_shard(out_dir / "shards", "part-00000.parquet", records)
    manifest = {
        "job": f"canvases of {run_dir}",
        "categories": categories,
        "counts": {"records": len(records)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir
