"""ImageFolder export: OUT/imagefolder/<class>/<image>.png, for torchvision's ImageFolder.

A class folder is named after its concept; concepts whose names give the same folder name
(WordNet's two "griffon" synsets) get their category id added, so that no two classes merge.
A class with no image (every one flagged) gets no folder, as ImageFolder refuses empty ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from augment.sinks.rows import image_file_name
from augment.taxonomy.listfile import slugify

log = logging.getLogger(__name__)


def class_folders(categories: list[dict]) -> dict[int, str]:
    """Category id -> its class folder's name, distinct for every category."""
    names = {c["id"]: slugify(c["name"]) for c in categories}
    taken = Counter(names.values())
    return {cid: name if taken[name] == 1 else f"{name}-{cid}" for cid, name in names.items()}


def export_imagefolder(root: Path, categories: list[dict], records: Iterable[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    folders = {cid: root / name for cid, name in class_folders(categories).items()}
    for record in records:
        if record["category_id"] is None:  # a canvas of background alone: no class to file
            continue
        folder = folders[record["category_id"]]
        folder.mkdir(exist_ok=True)
        (folder / image_file_name(record)).write_bytes(record["image"]["bytes"])
    empty = sorted(c["name"] for c in categories if not folders[c["id"]].is_dir())
    if empty:
        log.warning(
            "imagefolder: no image of %s (every one flagged): no folder for %s",
            ", ".join(empty),
            "it" if len(empty) == 1 else "them",
        )
    return root
