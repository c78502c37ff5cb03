"""Sinks: Parquet shards (the source of truth) and the exports derived from them.

Every export reads OUT/shards and OUT/manifest.json (for the categories), never memory, so it
can be rerun at any time: ``augment export OUT --format coco --format yolo``. Flagged images
(black, NaN, NSFW, filtered) are left out unless asked for. A shard that cannot be read is
skipped and named; each export is written to a temporary folder and renamed into place, so a
failed export never leaves a half-written one (the previous export stays until then).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from augment.errors import OutputError
from augment.sinks.parquet import shard_paths
from augment.sinks.rows import export_records, image_file_name, run_categories, run_filters

__all__ = [
    "export",
    "export_records",
    "formats_to_refresh",
    "image_file_name",
    "run_categories",
    "run_filters",
]


def exporters() -> dict[str, Callable[[Path, list[dict], Iterator[dict]], Path]]:
    """Format -> exporter(folder, categories, records), which writes into `folder`."""
    from augment.sinks.coco import export_coco
    from augment.sinks.imagefolder import export_imagefolder
    from augment.sinks.yolo import export_yolo, export_yolo_segments

    return {
        "coco": export_coco,
        "yolo": export_yolo,
        "yolo-seg": export_yolo_segments,
        "imagefolder": export_imagefolder,
    }


def export(out_dir: Path, formats: list[str], include_flagged: bool = False) -> dict[str, Path]:
    """Write each export format from the shards; returns format -> main output path."""
    out_dir = Path(out_dir)
    available = exporters()
    unknown = [name for name in formats if name not in (*available, "parquet")]
    if unknown:
        raise OutputError(f"unknown export format '{unknown[0]}'; known: {', '.join(available)}")
    shards = shard_paths(out_dir / "shards")
    if not shards:
        raise OutputError(f"{out_dir}/shards holds no shards: nothing to export")
    categories = run_categories(out_dir)
    skipped: dict[Path, str] = {}  # damaged shards: the first export to read one names it
    paths = {}
    for name in dict.fromkeys(formats):
        if name != "parquet":
            records = export_records(out_dir, include_flagged, shards, skipped)
            exporter = unless_all_damaged(available[name], out_dir, shards, skipped)
            paths[name] = write_in_place(out_dir / name, exporter, categories, records)
    return paths


def unless_all_damaged(
    exporter: Callable, out_dir: Path, shards: list[Path], skipped: dict[Path, str]
) -> Callable:
    """`exporter`, refusing at the end when no shard could be read: the export already there,
    which may be the last readable copy of the images, is kept instead of emptied."""

    def export_or_refuse(folder: Path, categories: list[dict], records) -> Path:
        written = exporter(folder, categories, records)
        if len(skipped) == len(shards):
            shard, reason = next(iter(skipped.items()))
            raise OutputError(
                f"no shard of {out_dir} can be read ({shard.name}: {reason}); the exports there "
                "are kept as they were: rerun `augment run` on the job to quarantine the shards "
                "and render their images again"
            )
        return written

    return export_or_refuse


def formats_to_refresh(out_dir: Path, formats: list[str]) -> list[str]:
    """The exports to write again after OUT's images or flags changed: the job's formats, and
    every other export OUT holds (one `augment export` wrote), which would go stale."""
    held = [name for name in exporters() if (Path(out_dir) / name).is_dir()]
    return list(dict.fromkeys([*formats, *held]))


def write_in_place(folder: Path, exporter: Callable, categories: list[dict], records) -> Path:
    """Run `exporter` into a temporary folder, then swap it for `folder` in two renames."""
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        written = exporter(tmp, categories, records)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    except BaseException:
        if old.exists() and not folder.exists():  # put the previous export back
            old.rename(folder)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder / written.relative_to(tmp)
