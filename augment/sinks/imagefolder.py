"""ImageFolder export: OUT/imagefolder/<class>/<image>.png, for torchvision's ImageFolder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from augment.sinks.rows import image_file_name
from augment.taxonomy.listfile import slugify


def export_imagefolder(root: Path, categories: list[dict], records: Iterable[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    folders = {c["id"]: root / slugify(c["name"]) for c in categories}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        (folders[record["category_id"]] / image_file_name(record)).write_bytes(
            record["image"]["bytes"]
        )
    return root
