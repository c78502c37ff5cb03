"""Sinks: Parquet shards (the source of truth) and the exports derived from them.

Every export reads OUT/shards and OUT/manifest.json (for the categories), never memory, so it
can be rerun at any time: ``augment export OUT --format coco --format yolo``. Flagged images
(black, NaN, NSFW, filtered) are left out unless asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from augment.errors import OutputError
from augment.sinks.parquet import read_records, shard_paths
from augment.taxonomy.listfile import slugify

FLAGS = ("black", "nan", "nsfw", "filtered")


def image_file_name(record: dict) -> str:
    """A flat, safe file name: sanitized concept name + item_id (never leaves its folder)."""
    return f"{slugify(record['concept_name'])}_{record['item_id']}.png"


def export_records(out_dir: Path, include_flagged: bool = False) -> Iterator[dict]:
    for record in read_records(Path(out_dir) / "shards"):
        if include_flagged or not any(record[flag] for flag in FLAGS):
            yield record


def run_categories(out_dir: Path) -> list[dict]:
    """The run's categories, from its manifest (written by `augment run`)."""
    manifest = Path(out_dir) / "manifest.json"
    if not manifest.is_file():
        raise OutputError(
            f"{out_dir} has no manifest.json: it is not a finished `augment run` output; "
            "run the job (a rerun resumes) before exporting"
        )
    return json.loads(manifest.read_text())["categories"]


def exporters() -> dict[str, Callable[[Path, list[dict], Iterator[dict]], Path]]:
    from augment.sinks.coco import export_coco
    from augment.sinks.imagefolder import export_imagefolder
    from augment.sinks.yolo import export_yolo

    return {"coco": export_coco, "yolo": export_yolo, "imagefolder": export_imagefolder}


def export(out_dir: Path, formats: list[str], include_flagged: bool = False) -> dict[str, Path]:
    """Write each export format from the shards; returns format -> main output path."""
    out_dir = Path(out_dir)
    if not shard_paths(out_dir / "shards"):
        raise OutputError(f"{out_dir}/shards holds no shards: nothing to export")
    categories = run_categories(out_dir)
    available = exporters()
    paths = {}
    for name in formats:
        if name == "parquet":
            continue
        if name not in available:
            raise OutputError(f"unknown export format '{name}'; known: {', '.join(available)}")
        paths[name] = available[name](out_dir, categories, export_records(out_dir, include_flagged))
    return paths
