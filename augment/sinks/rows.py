"""What every export shares: the records it writes (flagged ones left out) and their file names."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml

from augment.errors import OutputError, ShardError, first_line
from augment.records import FLAGS
from augment.sinks.parquet import check_run_folder, read_shard, run_shards
from augment.taxonomy.listfile import slugify

log = logging.getLogger(__name__)


def image_file_name(record: dict) -> str:
    """A flat, safe file name: sanitized concept name + item_id (never leaves its folder)."""
    return f"{slugify(record['concept_name'])}_{record['item_id']}.png"


def export_records(
    out_dir: Path,
    include_flagged: bool = False,
    shards: list[Path] | None = None,
    skipped: dict[Path, str] | None = None,
    left_out: Counter | None = None,
) -> Iterator[dict]:
    """The records an export writes (flagged ones left out, counted by category id in
    `left_out` when given, so an export can say why a class has no image); `shards` picks
    some shards (by default every one: a folder without any is an error that says so). A
    shard that cannot be read raises `ShardError`, or, given `skipped`, is left out, named in
    a warning the first time, and added to it (shard -> why)."""
    shards = run_shards(out_dir) if shards is None else shards
    for path in shards:
        if skipped is not None and path in skipped:
            continue
        try:
            table = read_shard(path)
        except ShardError as exc:
            if skipped is None:
                raise
            skipped[path] = exc.reason
            log.warning("export skips shard %s: it cannot be read (%s)", path, exc.reason)
            continue
        for record in table.to_pylist():
            if include_flagged or not any(record[flag] for flag in FLAGS):
                yield record
            elif left_out is not None:
                left_out[record["category_id"]] += 1


def read_manifest(out_dir: Path) -> dict:
    """OUT/manifest.json (written by `augment run`), or an error that says how to get it."""
    out_dir = Path(out_dir)
    path = out_dir / "manifest.json"
    check_run_folder(out_dir)
    if not path.is_file():
        raise OutputError(
            f"{out_dir} has no manifest.json: it is not a finished `augment run` output; "
            "run the job (a rerun resumes) first"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        manifest = first_line(exc)
    if not isinstance(manifest, dict) or "categories" not in manifest:
        reason = manifest if isinstance(manifest, str) else "not a run's manifest"
        raise OutputError(
            f"{path} cannot be read ({reason}); delete it and rerun `augment run` on the job "
            f"with --out {out_dir}: committed images are kept, and it is written again (with "
            "the job's own filter: an `augment filter` run since, whose settings it held, "
            "must be run again after)"
        )
    return manifest


def read_saved_spec(out_dir: Path) -> dict:
    """OUT/job.yaml, the spec OUT was rendered with, or an error that says how to repair it."""
    path = Path(out_dir) / "job.yaml"
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        spec = first_line(exc)
    if not isinstance(spec, dict):
        reason = spec if isinstance(spec, str) else "not a job spec"
        raise OutputError(
            f"{path} cannot be read ({reason}): it is the spec {out_dir} was rendered with; "
            f"{saved_spec_remedy(out_dir)}"
        )
    return spec


def saved_spec_remedy(out_dir: Path) -> str:
    """How to repair a damaged OUT/job.yaml: a run resumes without it where the manifest's
    spec hash can check the run (and writes it anew)."""
    if (Path(out_dir) / "manifest.json").is_file():
        return (
            "put it back, or delete it to resume the run (`augment run` checks the run by the "
            "manifest's spec hash, then writes it anew), or start over with --force"
        )
    return "put it back, or start over with --force"


def concept_labels(names: dict[str, str]) -> dict[str, str]:
    """concept_id -> how exports, tables and pages call the concept: its name, or, where two
    concepts of a run share a name (WordNet's two "spotted salamander" synsets) or one that
    reads the same as a file name ("Xerox" and "xerox", "knife edge" and "knife-edge"), the
    name and its id. COCO's `getCatIds(catNms=...)`, a detector's class table and the gallery
    (one page held one of them and lost the other) could not tell them apart."""
    counts = Counter(slugify(name) for name in names.values())
    return {
        cid: f"{name} ({cid})" if counts[slugify(name)] > 1 else name for cid, name in names.items()
    }


def category_names(categories: list[dict]) -> dict[int, str]:
    """Category id -> its name in an export (`concept_labels`)."""
    keys = {c["id"]: c.get("concept_id") or str(c["id"]) for c in categories}
    labels = concept_labels({keys[c["id"]]: c["name"] for c in categories})
    return {cid: labels[key] for cid, key in keys.items()}


def run_categories(out_dir: Path) -> list[dict]:
    """The run's categories, from its manifest (written by `augment run`)."""
    return read_manifest(out_dir)["categories"]


def run_filters(out_dir: Path) -> dict:
    """The filter settings a run's flags stand for: the last `augment filter`'s (in the
    manifest), else the job's own (job.yaml); {} when neither file says."""
    manifest, job = Path(out_dir) / "manifest.json", Path(out_dir) / "job.yaml"
    if manifest.is_file() and (filters := read_manifest(out_dir).get("filters")):
        return filters
    if job.is_file():
        return read_saved_spec(out_dir).get("filters") or {}
    return {}
