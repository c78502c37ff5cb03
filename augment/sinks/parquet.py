"""Parquet shards: the records of a run, committed atomically.

A shard is written under a temporary name and renamed into place only when complete, so a
reader (or a resumed run) never sees half a shard. Pages carry CRC checksums, so a shard damaged
later (truncated, overwritten) is found when read: every reader here raises `ShardError` naming
the shard, and a resumed run moves such a shard to OUT/quarantine/ and renders its items again.

The image column is the Hugging Face `datasets` Image struct {bytes, path}, declared in the
schema metadata so that ``datasets.load_dataset("parquet", ...)`` decodes it as images.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import OutputError, ShardError, first_line
from augment.records import RECORD_SCHEMA

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

SHARD_GLOB = "part-*.parquet"
ROW_GROUP_SIZE = 100  # images are large rows: small row groups keep readers' memory low


def shard_paths(shards_dir: Path) -> list[Path]:
    return sorted(Path(shards_dir).glob(SHARD_GLOB))


def remove_temp_files(shards_dir: Path) -> int:
    """Delete shards left half-written by a crash; returns how many were removed."""
    removed = 0
    for tmp in Path(shards_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def count_true(shards_dir: Path, columns: list[str]) -> tuple[int, dict[str, int]]:
    """Rows in the committed shards, and how many are true in each boolean column."""
    counts, rows = dict.fromkeys(columns, 0), 0
    for record in read_records(shards_dir, columns=columns):
        rows += 1
        for column in columns:
            counts[column] += bool(record[column])
    return rows, counts


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file of ours that is not a shard (a plan; shards go through `read_shard`).
    (`pq.read_table` would import `pyarrow.dataset`, and pandas with it: 0.6 s a process.)"""
    with pq.ParquetFile(path) as file:
        return file.read(columns=columns)


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One whole shard (its pages' checksums verified), or `ShardError` naming it. A shard
    written before a column existed reads with that column empty."""
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as file:  # opened once
            names = file.schema_arrow.names
            present = None if columns is None else [c for c in columns if c in names]
            table = file.read(columns=present)
        missing = set(columns or ()) - set(names)
        if missing - set(LATER_COLUMNS):
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        return conform(table, columns)
    except (OSError, pa.ArrowException, ValueError) as exc:
        reason = first_line(exc)
        raise ShardError(path, reason) from None


#: Record columns added after shards were first written; older shards read them as empty.
LATER_COLUMNS = (
    "mask_area",
    "bad_mask",
    "not_found",
    "scored_as",
    "embedding",
    "phash",
    "thumb",
    "duplicate",
    "duplicate_of",
    "model_hash",
    "license",
    "watermark",
)


def conform(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """An older shard's table in today's schema (new columns and box fields empty)."""
    schema = RECORD_SCHEMA
    if columns is not None:
        schema = pa.schema(RECORD_SCHEMA.field(c) for c in columns)
    if table.schema.equals(schema, check_metadata=False):
        return table
    return pa.Table.from_pylist(table.to_pylist(), schema=schema)


def check_shards(shards_dir: Path) -> tuple[set[str], dict[Path, str]]:
    """Read every committed shard in full: (item_ids of the readable ones, damaged shard ->
    why). A resumed run skips those items and quarantines the damaged shards. A shard an
    older augment wrote, without today's later columns, is written again in today's schema:
    augment's readers fill the gap, but pandas dropped those columns from every row of the run
    and `datasets` refused a run of mixed shards."""
    ids: set[str] = set()
    damaged: dict[Path, str] = {}
    for path in shard_paths(shards_dir):
        try:
            table = read_shard(path)
        except ShardError as exc:
            damaged[path] = exc.reason
            continue
        ids.update(table.column("item_id").to_pylist())
        if not pq.read_schema(path).equals(RECORD_SCHEMA, check_metadata=False):
            write_table(path.parent, path.name, table)
    return ids, damaged


def committed_item_ids(shards_dir: Path) -> set[str]:
    """item_ids already in committed shards (a damaged shard is an error naming it)."""
    ids: set[str] = set()
    for path in shard_paths(shards_dir):
        ids.update(read_shard(path, ["item_id"]).column("item_id").to_pylist())
    return ids


def quarantine(out_dir: Path, shards: list[Path]) -> list[Path]:
    """Move damaged shards to OUT/quarantine/ (never deleted: a person may want them back)."""
    if not shards:
        return []
    folder = Path(out_dir) / "quarantine"
    folder.mkdir(exist_ok=True)
    moved = []
    for shard in shards:
        target, copy = folder / shard.name, 1
        while target.exists():  # a shard of the same name was quarantined before
            target, copy = folder / f"{shard.stem}.{copy}{shard.suffix}", copy + 1
        shard.replace(target)
        moved.append(target)
    return moved


def read_records(
    shards_dir: Path, columns: list[str] | None = None, shards: list[Path] | None = None
) -> Iterator[dict]:
    """Yield records shard by shard (one shard in memory at a time); `shards` picks some."""
    for path in shard_paths(shards_dir) if shards is None else shards:
        yield from read_shard(path, columns).to_pylist()


def write_shard(shards_dir: Path, name: str, records: list[dict]) -> Path:
    """Commit records as one shard: write a temp file, fsync, rename into place."""
    return write_table(shards_dir, name, pa.Table.from_pylist(records, schema=RECORD_SCHEMA))


def write_table(shards_dir: Path, name: str, table: pa.Table) -> Path:
    """Commit a table as shard `name` (a new one, or one rewritten in place): a reader sees
    the old shard or the new one, never half of one. The same records give the same bytes
    (a table read back names its list items as Parquet does; the cast names them as written)."""
    table = table.cast(RECORD_SCHEMA)
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    tmp = shards_dir / f".{name}.tmp"
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, write_page_checksum=True)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    path = shards_dir / name
    tmp.replace(path)
    return path


def shards_fingerprint(shards_dir: Path) -> str:
    """The committed shards' names, sizes and modification times, hashed: a rewritten or new
    shard changes it (what was computed from the shards before then is stale)."""
    import hashlib

    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shard_paths(shards_dir)]
    return hashlib.sha1(repr(stats).encode()).hexdigest()


def next_shard_index(shards_dir: Path) -> int:
    """One past the highest committed shard number: new shards never overwrite old ones."""
    numbers = [int(p.stem.rsplit("-", 1)[-1]) for p in shard_paths(shards_dir)]
    return max(numbers, default=-1) + 1


class EncodedImage(dict):
    """An image kept as its encoded bytes, decoded only when asked: `.open()` gives a PIL
    image, and a notebook shows it as a picture. It is the shards' {"bytes", "path"} cell too,
    so a DataFrame of them (filtered, say) saves with `to_parquet` as the shards hold it."""

    def __init__(self, data: bytes, path: str | None = None):
        super().__init__(bytes=data, path=path)

    @property
    def data(self) -> bytes:
        return self["bytes"]

    @property
    def path(self) -> str | None:
        return self["path"]

    def open(self) -> Image.Image:
        from PIL import Image

        return Image.open(io.BytesIO(self.data))

    def _repr_png_(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"<EncodedImage {self.path} ({len(self.data):,} bytes)>"


def check_run_folder(out_dir: Path) -> None:
    """An output folder given by a user exists (else an error that says so, before anything
    reads or writes in it)."""
    if Path(out_dir).is_file():
        raise OutputError(f"{out_dir} is a file; give the output folder of `augment run`")
    if not Path(out_dir).is_dir():
        raise OutputError(f"{out_dir}: no such folder; give the output folder of `augment run`")


def run_shards(out_dir: Path) -> list[Path]:
    """The committed shards of an output folder; an error when there are none."""
    check_run_folder(out_dir)
    shards = shard_paths(Path(out_dir) / "shards")
    if not shards and shard_paths(Path(out_dir)):  # OUT/shards given for OUT
        raise OutputError(
            f"{out_dir} is a run's shards folder; give the run's output folder, "
            f"{Path(out_dir).parent}"
        )
    if not shards:
        raise OutputError(
            f"{out_dir}/shards holds no shards: not an `augment run` output, or nothing rendered"
        )
    return shards


def read_run(out_dir: Path) -> pa.Table:
    """Every record of a run as one Arrow table (the shards' schema, metadata included)."""
    tables = [read_shard(path) for path in run_shards(out_dir)]
    return pa.concat_tables(tables).cast(RECORD_SCHEMA)


def read_frame(out_dir: Path) -> pd.DataFrame:
    """Every record of a run as a DataFrame; `image` cells are `EncodedImage`s."""
    frame = read_run(out_dir).to_pandas()
    frame["image"] = [
        EncodedImage(cell["bytes"], cell["path"]) if cell is not None else None
        for cell in frame["image"]
    ]
    return frame


def read_dataset(out_dir: Path):
    """Every record of a run as a Hugging Face `datasets.Dataset` (images as an Image feature,
    from the shards' schema metadata)."""
    try:
        import datasets
    except ImportError:
        raise OutputError("reading a run as a Dataset needs `pip install datasets`") from None
    return datasets.Dataset(read_run(out_dir))
