"""What every export shares: the records it writes (flagged ones left out) and their file names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import yaml

from augment.errors import OutputError
from augment.records import FLAGS
from augment.sinks.parquet import read_records
from augment.taxonomy.listfile import slugify


def image_file_name(record: dict) -> str:
    """A flat, safe file name: sanitized concept name + item_id (never leaves its folder)."""
    return f"{slugify(record['concept_name'])}_{record['item_id']}.png"


def export_records(
    out_dir: Path, include_flagged: bool = False, shards: list[Path] | None = None
) -> Iterator[dict]:
    """The records an export writes (flagged ones left out); `shards` picks some shards."""
    for record in read_records(Path(out_dir) / "shards", shards=shards):
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


def run_filters(out_dir: Path) -> dict:
    """The filter settings a run's flags stand for: the last `augment filter`'s (in the
    manifest), else the job's own (job.yaml); {} when neither file says."""
    manifest, job = Path(out_dir) / "manifest.json", Path(out_dir) / "job.yaml"
    if manifest.is_file() and (filters := json.loads(manifest.read_text()).get("filters")):
        return filters
    if job.is_file():
        return (yaml.safe_load(job.read_text()) or {}).get("filters") or {}
    return {}
