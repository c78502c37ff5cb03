"""The plan: one work item per image, deterministic and resumable.

An item's `item_id` is a stable hash of (job name, concept id, prompt, variant, source image id)
and its `seed` derives from the job seed and the item_id, so the same item renders the same image
on any worker, in any order, in any run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from augment.prompts import Prompt


@dataclass(frozen=True)
class WorkItem:
    item_id: str
    concept_id: str
    concept_name: str
    synset: str | None
    category_id: int
    prompt: str
    negative_prompt: str
    variant: int
    seed: int
    source_image_id: str | None = None


PLAN_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("concept_id", pa.string()),
        ("concept_name", pa.string()),
        ("synset", pa.string()),
        ("category_id", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("variant", pa.int64()),
        ("seed", pa.int64()),
        ("source_image_id", pa.string()),
    ]
)


def make_item_id(
    job_name: str, concept_id: str, prompt: str, variant: int, source_image_id: str | None
) -> str:
    key = json.dumps([job_name, concept_id, prompt, variant, source_image_id])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def item_seed(job_seed: int, item_id: str) -> int:
    """A 63-bit seed for torch.Generator, independent of item order and worker."""
    digest = hashlib.sha256(f"{job_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def build_plan(job_name: str, job_seed: int, prompts: list[Prompt]) -> list[WorkItem]:
    items = []
    for prompt in prompts:
        item_id = make_item_id(job_name, prompt.concept.id, prompt.text, prompt.variant, None)
        items.append(
            WorkItem(
                item_id=item_id,
                concept_id=prompt.concept.id,
                concept_name=prompt.concept.name,
                synset=prompt.concept.synset,
                category_id=prompt.concept.category_id,
                prompt=prompt.text,
                negative_prompt=prompt.negative,
                variant=prompt.variant,
                seed=item_seed(job_seed, item_id),
            )
        )
    return items


def plan_table(items: list[WorkItem]) -> pa.Table:
    return pa.Table.from_pylist([asdict(item) for item in items], schema=PLAN_SCHEMA)


def write_plan(items: list[WorkItem], path: Path) -> None:
    """Write plan.parquet atomically (temp name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(plan_table(items), tmp)
    tmp.replace(path)


def read_plan(path: Path) -> list[WorkItem]:
    return [WorkItem(**row) for row in pq.read_table(path).to_pylist()]
