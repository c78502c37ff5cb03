"""YOLO export: OUT/yolo/data.yaml + images/ + labels/, trainable by ultralytics offline.

Class indices follow the categories sorted by id (index 0 = the lowest category id); data.yaml
lists the names and, as a comment-free extra key, the category id of each index. There is no
`download:` key, so ultralytics never tries the network, and no `path:` key, so ultralytics takes
the folder of data.yaml as the root and the export can be moved. Synthetic images are training
data: the same folder serves as `val`, and benchmarks validate on real images instead.

`yolo-seg` (OUT/yolo-seg) is ultralytics' segmentation format: one polygon a line, traced from
the instance's mask (a mask in parts joined into one path); a box without a mask is written as
its rectangle, as the COCO export does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import yaml

from augment.sinks.rows import category_names, image_file_name

log = logging.getLogger(__name__)


def yolo_box_line(cls: int, bbox, width: int, height: int) -> str:
    """'class cx cy w h', normalised to the image size."""
    x, y, w, h = bbox
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    return f"{cls} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}"


def yolo_instance_line(cls: int, bbox, mask: np.ndarray | None, width: int, height: int) -> str:
    """'class x1 y1 x2 y2 ...': the mask's outline (`mask_polygon`), or the box's rectangle
    when there is no mask, each point normalised to the image size."""
    from augment.labels.segment import mask_polygon

    polygon = None if mask is None else mask_polygon(mask)
    if polygon is None:
        x, y, w, h = bbox
        polygon = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)
    points = np.clip(polygon / np.array([width, height], np.float32), 0.0, 1.0)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in points.reshape(-1))


def yolo_label_lines(record: dict, class_index: dict[int, int]) -> list[str]:
    """One box line per box of the record."""
    width, height = record["width"], record["height"]
    return [
        yolo_box_line(class_index[box["category_id"]], box["bbox"], width, height)
        for box in record["boxes"] or []
    ]


def yolo_segment_lines(record: dict, class_index: dict[int, int]) -> list[str]:
    """One polygon line per box: its mask's outline, or its rectangle when it has no mask."""
    from augment.labels.segment import decode_rle

    width, height = record["width"], record["height"]
    lines = []
    for box in record["boxes"] or []:
        mask = decode_rle(box["rle"], height, width) if box.get("rle") else None
        cls = class_index[box["category_id"]]
        lines.append(yolo_instance_line(cls, box["bbox"], mask, width, height))
    return lines


def export_yolo_segments(yolo_dir: Path, categories: list[dict], records: Iterable[dict]) -> Path:
    """The YOLO export in ultralytics' segmentation format (polygons), for `-seg` models."""
    return export_yolo(yolo_dir, categories, records, yolo_segment_lines)


def export_yolo(
    yolo_dir: Path,
    categories: list[dict],
    records: Iterable[dict],
    label_lines: Callable[[dict, dict[int, int]], list[str]] | None = None,
) -> Path:
    """data.yaml + images/ + labels/, each label file written by `label_lines` (default: the
    box lines, looked up when called)."""
    label_lines = label_lines or yolo_label_lines
    images_dir, labels_dir = yolo_dir / "images", yolo_dir / "labels"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(categories, key=lambda c: c["id"])
    names = category_names(categories)
    class_index = {c["id"]: index for index, c in enumerate(ordered)}
    images = labelled = 0
    for record in records:
        name = image_file_name(record)
        (images_dir / name).write_bytes(record["image"]["bytes"])
        lines = label_lines(record, class_index)
        (labels_dir / name).with_suffix(".txt").write_text("\n".join(lines) + "\n" * bool(lines))
        images, labelled = images + 1, labelled + bool(lines)
    if images and not labelled:  # a detector trained on it learns every image is background
        log.warning(
            "%s: none of its %d images has a label (the run has no boxes or masks: add "
            "labels: or segment: to the job, or render from a source with boxes)",
            yolo_dir.name.lstrip(".").removesuffix(".tmp"),
            images,
        )
    data = {
        "train": "images",
        "val": "images",
        "names": {index: names[c["id"]] for index, c in enumerate(ordered)},
        "category_ids": {index: c["id"] for index, c in enumerate(ordered)},
    }
    path = yolo_dir / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
