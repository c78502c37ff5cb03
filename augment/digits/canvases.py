"""The digits detection world: digits on 96 px canvases, with boxes and masks (the ink).

Real canvases come from real digits and are written as a COCO dataset: train from the
classifier's pool; val from its test digits, the canvases the demo's detector settings were
tuned on; test from its validation digits, which no detector choice saw, scored once.
Synthetic canvases are not made here: the demo job's own `segment:` and `paste:` sections cut
the rendered digits along their threshold masks and paste them onto a blank canvas
(`builtin:digits-blank-canvas`), into OUT/paste, the general copy-paste stage any job can use.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from augment.digits.folders import CANVAS_DESCRIPTION, check_canvas_folder
from augment.errors import AugmentError, at_least
from augment.labels import Canvas, compose_canvases
from augment.labels.segment import encode_rle

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
    shutil.rmtree(images_dir, ignore_errors=True)  # an earlier set's (checked to be ours)
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, canvas in enumerate(canvases, start=first_id):
        (images_dir / f"{image_id}.png").write_bytes(png_bytes(canvas.pixels))
        height, width = canvas.pixels.shape[:2]
        images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height}
        )
        for (category_id, (x, y, w, h)), source, mask in zip(
            canvas.boxes, canvas.sources, canvas.masks, strict=True
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [height, width], "counts": encode_rle(mask)},
                    "source": source,  # which real digit (digits-<index>) this is
                }
            )
    document = {
        "info": {"description": CANVAS_DESCRIPTION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": digit_categories(),
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(document))
    return path


def real_canvases(
    folder: Path,
    train_count: int = 300,
    val_count: int = 150,
    seed: int = 0,
    per_class: int | None = None,
    test_count: int = 150,
) -> Path:
    """OUT/{train,val,test}/annotations.json from real digits: pool -> train, test -> val,
    validation -> test (no test/ for `test_count` 0).

    The detector's val canvases are the classifier's test digits because the demo's detector
    settings were tuned on them before there was a test split; the digits no detector choice
    saw, the classifier's validation split, make the test canvases. `per_class` real digits of
    each class (drawn with `seed`) make every train canvas, the few-shot regime the classifier
    benchmark measures; None uses the whole pool (30 a class)."""
    at_least("train canvases", train_count, 1)
    at_least("val canvases", val_count, 1)
    at_least("test canvases", test_count, 0)
    check_canvas_folder(Path(folder))
    from augment.digits.data import (
        DIGIT_NAMES,
        POOL_PER_CLASS,
        digit_splits,
        load_digit_images,
    )

    images, labels = load_digit_images(32)
    splits = digit_splits()
    pool = splits["pool"]
    if per_class is not None:
        at_least("real digits per class", per_class, 1)
        if per_class > POOL_PER_CLASS:
            raise AugmentError(
                f"the pool holds {POOL_PER_CLASS} real digits a class; ask for at most that "
                f"many per class, not {per_class}"
            )
        rng = np.random.default_rng(seed)
        chosen = [
            rng.choice(pool[labels[pool] == label], per_class, replace=False)
            for label in range(len(DIGIT_NAMES))
        ]
        pool = np.sort(np.concatenate(chosen))
    shutil.rmtree(folder / "test", ignore_errors=True)  # an earlier set's (checked to be ours)
    for name, rows, count, offset in (
        ("train", pool, train_count, 0),
        ("val", splits["test"], val_count, 1),
        ("test", splits["validation"], test_count, 2),
    ):
        if not count:
            continue
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
