"""Sinks: Parquet shards (the source of truth) and the exports derived from them.

Every export reads OUT/shards and OUT/manifest.json (for the categories), never memory, so it
can be rerun at any time: ``augment export OUT --format coco --format yolo``. Flagged images
(black, NaN, NSFW, filtered) are left out unless asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from augment.errors import OutputError
from augment.sinks.parquet import shard_paths
from augment.sinks.rows import export_records, image_file_name, run_categories

__all__ = ["export", "export_records", "image_file_name", "run_categories"]


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
