"""Sinks: Parquet shards (the source of truth) and the exports derived from them.

Every export reads OUT/shards and OUT/manifest.json (for the categories), never memory, so it
can be rerun at any time: ``augment export OUT --format coco --format yolo``. Flagged images
(black, NaN, NSFW, filtered) are left out unless asked for. A shard that cannot be read is
skipped and named where the export is new, and refused where it would replace an export that
may hold its images; each export is written to a temporary folder and renamed into place, so a
failed export never leaves a half-written one (the previous export stays until then).

Each export folder records its own settings (`EXPORT_SETTINGS`: whether flagged images are
in it), so writing it again after `augment filter` or a resumed run keeps the choice the user
made with `augment export --include-flagged`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatch
from functools import partial
from pathlib import Path

from augment.errors import OutputError
from augment.progress import tracked
from augment.sinks.parquet import run_shards, shards_fingerprint
from augment.sinks.rows import export_records, image_file_name, run_categories, run_filters

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_SETTINGS",
    "export",
    "export_records",
    "export_settings",
    "run_state",
    "recorded_settings",
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


#: The file in each export folder that says how it was written ({"include_flagged": ...});
#: hidden, so the tools that read the export (ImageFolder, datasets, ultralytics) pass it by.
EXPORT_SETTINGS = ".augment-export.json"

#: What each export writes at the top of its folder ("name/": any folder): anything else
#: there is the user's, which writing the export again (a new folder swapped in) would delete.
EXPORT_NAMES = {
    "coco": ("annotations.json", "images", EXPORT_SETTINGS),
    "yolo": ("data.yaml", "images", "labels", "*.cache", EXPORT_SETTINGS),  # *.cache: ultralytics'
    "yolo-seg": ("data.yaml", "images", "labels", "*.cache", EXPORT_SETTINGS),
    "imagefolder": ("*/", EXPORT_SETTINGS),  # a folder per class
}


def check_own_folder(
    folder: Path, names: tuple[str, ...], what: str, writer: str = "augment"
) -> None:
    """`folder`, which a new `what` of `writer`'s is about to replace, holds only what one
    writes there (file names matching `names`); a file in its place, or the user's own files
    in it, are refused."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(
            f"{folder} is a file, where {writer} writes its {what}: move it away and run this again"
        )
    others = sorted(
        path.name
        for path in folder.iterdir()
        if not any(
            fnmatch(path.name, name.rstrip("/")) and (path.is_dir() or not name.endswith("/"))
            for name in names
        )
    )
    if others:
        raise OutputError(
            f"{folder} holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}, which "
            f"{writer} did not write; writing its {what} again replaces the whole folder: move "
            "them away first"
        )


def known_categories(records: Iterable[dict], categories: list[dict], out_dir: Path):
    """`records`, each checked to have one of the manifest's categories (or none: a paste
    canvas nothing could be pasted on, a negative): a manifest edited by hand would otherwise
    give images of no category (COCO) or fail mid-export."""
    ids = {category["id"] for category in categories} | {None}
    for record in records:
        if record["category_id"] not in ids:
            raise OutputError(
                f"{out_dir}/shards hold images of category {record['category_id']}, which "
                f"{out_dir}/manifest.json does not list: the manifest no longer matches the "
                "shards; put the run's own manifest back, or rerun `augment run` on the job to "
                "write it again"
            )
        yield record


def run_state(out_dir: Path) -> str:
    """A fingerprint of what an export or a gallery is made from: OUT's committed shards (their
    names, sizes and modification times; a filter or a run that changes one rewrites it) and
    its categories. The same fingerprint: nothing they show has changed."""
    run_shards(out_dir)  # a wrong folder named as such
    shards = shards_fingerprint(Path(out_dir) / "shards")
    state = json.dumps([shards, run_categories(out_dir)], sort_keys=True, default=str)
    return hashlib.sha1(state.encode()).hexdigest()


def export(
    out_dir: Path,
    formats: list[str],
    include_flagged: bool | None = None,
    unless_current: bool = False,
) -> dict[str, Path]:
    """Write each export format from the shards; returns format -> main output path.

    `include_flagged` None (exports written again after the flags changed) keeps each
    export's own setting, recorded in its folder: an `augment export --include-flagged`
    stays one; a new export, or one an earlier augment wrote, leaves flagged images out.
    `unless_current`: an export made from the shards as they are now is kept as it is (a
    resume with nothing to do wrote 100,000 images again per export)."""
    out_dir = Path(out_dir)
    available = exporters()
    unknown = [name for name in formats if name not in (*available, "parquet")]
    if unknown:
        raise OutputError(f"unknown export format '{unknown[0]}'; known: {', '.join(available)}")
    shards = run_shards(out_dir)  # a wrong folder named as such, not as one without shards
    categories = run_categories(out_dir)
    formats = [name for name in dict.fromkeys(formats) if name != "parquet"]
    check_exports_replaceable(out_dir, formats)  # before any is written
    skipped: dict[Path, str] = {}  # damaged shards: the first export to read one names it
    paths = {}
    state = run_state(out_dir)
    for name in formats:
        flagged = include_flagged
        recorded = export_settings(out_dir / name)
        if flagged is None:
            flagged = recorded.get("include_flagged") is True
        main = out_dir / name / str(recorded.get("main"))
        if unless_current and recorded.get("state") == state and main.exists():
            if recorded.get("include_flagged", False) == flagged:
                paths[name] = main
                continue
        left_out: Counter = Counter()  # category id -> flagged images left out
        read = tracked(shards, f"export {name}", unit="shard")
        records = export_records(out_dir, flagged, read, skipped, left_out)
        records = known_categories(records, categories, out_dir)
        exporter = available[name]
        if name == "imagefolder":  # it says why a class gets no folder
            exporter = partial(exporter, flagged=left_out, unread=skipped)
        exporter = unless_damaged(exporter, out_dir, name, shards, skipped)
        exporter = recording(exporter, {"include_flagged": flagged, "state": state})
        paths[name] = write_in_place(out_dir / name, exporter, categories, records)
    return paths


def export_settings(folder: Path) -> dict:
    """The settings an export folder was written with (`EXPORT_SETTINGS`)."""
    return recorded_settings(Path(folder) / EXPORT_SETTINGS)


def recorded_settings(path: Path) -> dict:
    """The settings a folder records in its file `path` (an export's, a gallery's); {} where it
    records none (an earlier augment's, or a file a person edited into something else)."""
    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def recording(exporter: Callable, settings: dict) -> Callable:
    """`exporter`, which then writes `settings` into the folder it wrote (EXPORT_SETTINGS)."""

    def export_and_record(folder: Path, categories: list[dict], records) -> Path:
        written = exporter(folder, categories, records)
        main = {"main": written.relative_to(folder).as_posix() if written != folder else "."}
        (folder / EXPORT_SETTINGS).write_text(json.dumps({**settings, **main}) + "\n")
        return written

    return export_and_record


def check_exports_replaceable(out_dir: Path, formats: list[str]) -> None:
    """Each export folder of `formats` in OUT holds nothing but an earlier export: checked by
    a run before it renders, and by `export` before it writes."""
    for name in formats:
        if name in EXPORT_NAMES:
            check_own_folder(Path(out_dir) / name, EXPORT_NAMES[name], f"{name} export")


def unless_damaged(
    exporter: Callable, out_dir: Path, name: str, shards: list[Path], skipped: dict[Path, str]
) -> Callable:
    """`exporter`, refusing at the end when a shard could not be read and OUT already holds
    this export (which may be the last copy of that shard's images), or when no shard could be
    read: the export there is kept instead of replaced by one without them. With no export
    there yet, the readable shards are exported (each skipped one named in a warning)."""

    def export_or_refuse(folder: Path, categories: list[dict], records) -> Path:
        written = exporter(folder, categories, records)
        if skipped and (len(skipped) == len(shards) or (out_dir / name).exists()):
            shard, reason = next(iter(skipped.items()))
            which = (
                "no shard of {} can be read"
                if len(skipped) == len(shards)
                else f"{len(skipped)} shard(s) of {{}} cannot be read"
            ).format(out_dir)
            raise OutputError(
                f"{which} ({shard.name}: {reason}); the exports there "
                "are kept as they were: rerun `augment run` on the job to quarantine the shards "
                "and render their images again"
            )
        return written

    return export_or_refuse


def formats_to_refresh(out_dir: Path, formats: list[str]) -> list[str]:
    """The exports to write again after OUT's images or flags changed: the job's formats, and
    every other export OUT holds (one `augment export` wrote), which would go stale."""
    for name in exporters():
        put_back(Path(out_dir) / name)
    held = [name for name in exporters() if (Path(out_dir) / name).is_dir()]
    return list(dict.fromkeys([*formats, *held]))


def put_back(folder: Path) -> None:
    """`folder` as it was before a swap that a killed process left half done (`write_in_place`
    renames the old one aside, then the new one in): the old one moved back, where there is
    no new one, so it is neither lost nor hidden (and written again as it was made)."""
    old, tmp = folder.with_name(f".{folder.name}.old"), folder.with_name(f".{folder.name}.tmp")
    if not folder.exists() and old.is_dir():
        old.rename(folder)
        log.warning("%s: put back as it was, from a replacement stopped half way", folder)
        shutil.rmtree(tmp, ignore_errors=True)  # the replacement, of unknown completeness


def write_in_place(folder: Path, exporter: Callable, categories: list[dict], records) -> Path:
    """Run `exporter` into a temporary folder, then swap it for `folder` in two renames."""
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    put_back(folder)
    for leftover in (tmp, old):  # augment's own names, left by a process that was killed
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
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
