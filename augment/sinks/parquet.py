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

SHARD_GLOB = "part-*.parquet"
ROW_GROUP_SIZE = 100  # images are large rows: small row groups keep readers' memory low

BOX_TYPE = pa.struct(
    [
        ("category_id", pa.int64()),
        ("bbox", pa.list_(pa.float64())),  # COCO xywh, pixels
        ("segmentation", pa.list_(pa.list_(pa.float64()))),
    ]
)

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
        ("scheduler", pa.string()),
        ("steps", pa.int64()),
        ("guidance", pa.float64()),
        ("strength", pa.float64()),
        ("seed", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("source_image_id", pa.string()),
        ("boxes", pa.list_(BOX_TYPE)),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("clip_score", pa.float64()),
        ("black", pa.bool_()),
        ("nan", pa.bool_()),
        ("nsfw", pa.bool_()),
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


class ShardWriter:
    """Collects records and commits them as numbered shards of `rows_per_shard` rows."""

    def __init__(self, shards_dir: Path, rows_per_shard: int = 200, prefix: str = "part"):
        self.shards_dir = Path(shards_dir)
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.pending: list[dict] = []
        self.committed: list[tuple[str, int]] = []  # (file name, rows)
        self.next_index = self._first_free_index()

    def _first_free_index(self) -> int:
        taken = [int(p.stem.rsplit("-", 1)[-1]) for p in self.shards_dir.glob(f"{self.prefix}-*")]
        return max(taken, default=-1) + 1

    def write(self, record: dict) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        """Commit pending records as one shard: write a temp file, fsync, rename."""
        if not self.pending:
            return
        name = f"{self.prefix}-{self.next_index:05d}.parquet"
        tmp = self.shards_dir / f".{name}.tmp"
        table = pa.Table.from_pylist(self.pending, schema=RECORD_SCHEMA)
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(self.shards_dir / name)
        self.committed.append((name, len(self.pending)))
        self.pending = []
        self.next_index += 1

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
