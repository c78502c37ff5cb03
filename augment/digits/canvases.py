"""The digits detection world: digits on 96 px canvases, with boxes.

Real canvases come from real digits (the classifier's pool for training, the held-out test
split for validation) and are written as a COCO dataset. Synthetic canvases are not made here:
the demo job's own `segment:` and `paste:` sections cut the rendered digits along their
threshold masks and paste them onto a blank canvas (`builtin:digits-blank-canvas`), into
OUT/paste, the general copy-paste stage any job can use.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from augment.errors import at_least
from augment.labels import Canvas, compose_canvases

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
