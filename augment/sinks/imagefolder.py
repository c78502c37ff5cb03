"""ImageFolder export: OUT/imagefolder/<class>/<image>.png, for torchvision's ImageFolder.

A class folder is named after its concept; concepts whose names give the same folder name
(WordNet's two "griffon" synsets) get their category id added, so that no two classes merge.
A class with no image gets no folder, as ImageFolder refuses empty ones; a warning says why
(every image of it flagged, only in composites of several classes, in no image at all, or in
shards that could not be read).

ImageFolder gives an image one class. A rendered image's class is its concept. A paste
composite (OUT/paste) is filed under its pasted instances' class when every box on it (pasted
or the background's own) is of that class; one that shows several classes is left out and
counted in a warning (the COCO and YOLO exports keep it, with each box's class).
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


def composite_classes(record: dict) -> set[int]:
    """The classes a paste composite shows: its own (its first instance's) and its boxes'."""
    return {record["category_id"]} | {box["category_id"] for box in record.get("boxes") or ()}


def export_imagefolder(
    root: Path,
    categories: list[dict],
    records: Iterable[dict],
    flagged: Counter | None = None,
    unread: dict | None = None,
) -> Path:
    """Write one folder per class; `flagged` (category id -> images left out as flagged) and
    `unread` (shards that could not be read) only serve to say why a class has no folder."""
    root.mkdir(parents=True, exist_ok=True)
    folders = {cid: root / name for cid, name in class_folders(categories).items()}
    mixed: Counter = Counter()  # category id -> composites of several classes it is in
    left = 0
    for record in records:
        if record["category_id"] is None:  # a canvas of background alone: no class to file
            continue
        if record.get("mode") == "paste" and len(composite_classes(record)) > 1:
            mixed.update(composite_classes(record) - {None})
            left += 1
            continue
        folder = folders[record["category_id"]]
        folder.mkdir(exist_ok=True)
        (folder / image_file_name(record)).write_bytes(record["image"]["bytes"])
    if left:
        log.warning(
            "imagefolder: %d paste composite%s showing several classes left out (ImageFolder "
            "gives an image one class; the coco and yolo exports keep %s)",
            left,
            "" if left == 1 else "s",
            "it" if left == 1 else "them",
        )
    warn_empty_classes(categories, folders, flagged or Counter(), mixed, len(unread or ()))
    return root


def warn_empty_classes(
    categories: list[dict],
    folders: dict[int, Path],
    flagged: Counter,
    mixed: Counter,
    unread: int,
) -> None:
    """One warning per cause for the classes that got no folder."""
    causes: dict[str, list[str]] = {}
    for category in categories:
        cid = category["id"]
        if folders[cid].is_dir():
            continue
        if flagged[cid] and mixed[cid]:
            cause = "every image of {} is flagged or a composite of several classes"
        elif flagged[cid]:
            cause = "every image of {} is flagged (--include-flagged keeps them)"
        elif mixed[cid]:
            cause = "the images of {} all show several classes (paste composites)"
        elif unread:
            cause = f"no image of {{}} in the shards that could be read ({unread} could not)"
        else:
            cause = "no image of the run has {} as its class"
        causes.setdefault(cause, []).append(category["name"])
    for cause, names in causes.items():
        # a --limit trial of a 10,000-concept job named every one: a 118,000-character line
        shown = ", ".join(names[:NAMED_CLASSES])
        if len(names) > NAMED_CLASSES:
            shown += f" and {len(names) - NAMED_CLASSES} more classes"
        log.warning(
            "imagefolder: %s: no folder for %s",
            cause.format(shown),
            "it" if len(names) == 1 else "them",
        )


#: How many of the classes without a folder a warning names, for each cause.
NAMED_CLASSES = 10
