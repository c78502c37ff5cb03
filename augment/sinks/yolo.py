"""YOLO export: OUT/yolo/data.yaml + images/ + labels/, trainable by ultralytics offline.

Class indices follow the categories sorted by id (index 0 = the lowest category id); data.yaml
lists the names and, as a comment-free extra key, the category id of each index. There is no
`download:` key, so ultralytics never tries the network, and no `path:` key, so ultralytics takes
the folder of data.yaml as the root and the export can be moved. Synthetic images are training
data: the same folder serves as `val`, and benchmarks validate on real images instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from augment.sinks.rows import image_file_name


def yolo_label_lines(record: dict, class_index: dict[int, int]) -> list[str]:
    """'class cx cy w h' lines, normalised to the image size."""
    width, height = record["width"], record["height"]
    lines = []
    for box in record["boxes"] or []:
        x, y, w, h = box["bbox"]
        cx, cy = (x + w / 2) / width, (y + h / 2) / height
        cls = class_index[box["category_id"]]
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}")
    return lines


def export_yolo(yolo_dir: Path, categories: list[dict], records: Iterable[dict]) -> Path:
    images_dir, labels_dir = yolo_dir / "images", yolo_dir / "labels"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(categories, key=lambda c: c["id"])
    class_index = {c["id"]: index for index, c in enumerate(ordered)}
    for record in records:
        name = image_file_name(record)
        (images_dir / name).write_bytes(record["image"]["bytes"])
        lines = yolo_label_lines(record, class_index)
        (labels_dir / name).with_suffix(".txt").write_text("\n".join(lines) + "\n" * bool(lines))
    data = {
        "train": "images",
        "val": "images",
        "names": {index: c["name"] for index, c in enumerate(ordered)},
        "category_ids": {index: c["id"] for index, c in enumerate(ordered)},
    }
    path = yolo_dir / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
