"""Parquet shards: the records of a run, committed atomically.

A shard is written under a temporary name and renamed into place only when complete, so a
reader (or a resumed run) never sees half a shard. The image column is the Hugging Face
`datasets` Image struct {bytes, path}, declared in the schema metadata so that
``datasets.load_dataset("parquet", ...)`` decodes it as images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from augment.plan import BOX_TYPE

SHARD_GLOB = "part-*.parquet"
ROW_GROUP_SIZE = 100  # images are large rows: small row groups keep readers' memory low

RECORD_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("concept_id", pa.string()),
        ("concept_name", pa.string()),
        ("synset", pa.string()),
        ("category_id", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("mode", pa.string()),
        ("model", pa.string()),
        ("family", pa.string()),
        ("dtype", pa.string()),
        ("scheduler", pa.string()),
        ("steps", pa.int64()),
        ("guidance", pa.float64()),
        ("strength", pa.float64()),
        ("settings", pa.string()),  # JSON: every generation setting that shapes the pixels
        ("seed", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("source_image_id", pa.string()),
        ("target", pa.string()),
        ("boxes", pa.list_(BOX_TYPE)),
        ("sequence_id", pa.string()),
        ("frame", pa.int64()),
        ("prompt_b", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("clip_score", pa.float64()),
        ("concept_score", pa.float64()),  # filters: p(own concept | image)
        ("black", pa.bool_()),
        ("nan", pa.bool_()),
        ("nsfw", pa.bool_()),
        ("float32_retry", pa.bool_()),  # first render NaN/black: this is the float32 re-render
        ("filtered", pa.bool_()),
        ("render_s", pa.float64()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})},
)


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


def committed_item_ids(shards_dir: Path) -> set[str]:
    """item_ids already in committed shards: the work a resumed run skips."""
    ids: set[str] = set()
    for path in shard_paths(shards_dir):
        ids.update(pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist())
    return ids


def read_records(shards_dir: Path, columns: list[str] | None = None) -> Iterator[dict]:
    """Yield records shard by shard, row group by row group (images are not all in memory)."""
    for path in shard_paths(shards_dir):
        parquet = pq.ParquetFile(path)
        for index in range(parquet.num_row_groups):
            yield from parquet.read_row_group(index, columns=columns).to_pylist()


def write_shard(shards_dir: Path, name: str, records: list[dict]) -> Path:
    """Commit records as one shard: write a temp file, fsync, rename into place."""
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    tmp = shards_dir / f".{name}.tmp"
    table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    path = shards_dir / name
    tmp.replace(path)
    return path


def next_shard_index(shards_dir: Path) -> int:
    """One past the highest committed shard number: new shards never overwrite old ones."""
    numbers = [int(p.stem.rsplit("-", 1)[-1]) for p in shard_paths(shards_dir)]
    return max(numbers, default=-1) + 1
