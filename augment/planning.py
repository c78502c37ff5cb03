"""The plan: one work item per image, deterministic and resumable.

An item's `item_id` is a stable hash of (job name, concept id, prompt, variant, source image id)
and its `seed` derives from the job seed and the item_id, so the same item renders the same image
on any worker, in any order, in any run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import SpecError
from augment.labels import fitted_size, transfer_boxes
from augment.prompting import Prompt
from augment.records import PLAN_SCHEMA, SourceTarget, WorkItem
from augment.sinks.parquet import read_table

log = logging.getLogger(__name__)


def make_item_id(
    job_name: str,
    concept_id: str,
    prompt: str,
    variant: int,
    source_image_id: str | None,
    target: str | None = None,
) -> str:
    """The contract's hash; `target` (a box, a class, a frame) only enters when there is one."""
    parts = [job_name, concept_id, prompt, variant, source_image_id]
    key = json.dumps(parts if target is None else [*parts, target])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def item_seed(job_seed: int, item_id: str) -> int:
    """A 63-bit seed for torch.Generator, independent of item order and worker."""
    digest = hashlib.sha256(f"{job_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def build_plan(job_name: str, job_seed: int, prompts: list[Prompt]) -> list[WorkItem]:
    items = []
    for prompt in prompts:
        item_id = make_item_id(job_name, prompt.concept.id, prompt.text, prompt.variant, None)
        items.append(item_from_prompt(job_seed, prompt, item_id))
    return items


def item_from_prompt(job_seed: int, prompt: Prompt, item_id: str, **extra) -> WorkItem:
    return WorkItem(
        item_id=item_id,
        concept_id=prompt.concept.id,
        concept_name=prompt.concept.name,
        synset=prompt.concept.synset,
        category_id=prompt.concept.category_id,
        prompt=prompt.text,
        negative_prompt=prompt.negative,
        variant=prompt.variant,
        seed=item_seed(job_seed, item_id),
        **extra,
    )


def prompts_by_concept(prompts: list[Prompt]) -> dict[str, list[Prompt]]:
    """A concept's prompt variants, in plan order."""
    grouped: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        grouped.setdefault(prompt.concept.id, []).append(prompt)
    return grouped


def build_source_plan(
    job_name: str,
    job_seed: int,
    prompts: list[Prompt],
    targets: list[SourceTarget],
    longest_side: int,
) -> list[WorkItem]:
    """Each source target x each of its concept's prompt variants: one item.

    The item carries its render size (the source's aspect, longer side `longest_side`) and the
    source's boxes scaled to it, so a worker needs nothing but the source pixels.
    """
    by_concept = prompts_by_concept(prompts)
    items = []
    for target in targets:
        for prompt in by_concept.get(target.concept.id, []):
            item_id = make_item_id(
                job_name,
                prompt.concept.id,
                prompt.text,
                prompt.variant,
                target.image.id,
                target.target,
            )
            image = target.image
            width, height = fitted_size(image.width, image.height, longest_side)
            extra = {
                "source_image_id": image.id,
                "target": target.target,
                "width": width,
                "height": height,
                "boxes": tuple(
                    transfer_boxes(target.boxes, (image.width, image.height), (width, height))
                ),
            }
            items.append(item_from_prompt(job_seed, prompt, item_id, **extra))
    return items


def build_interpolation_plan(
    job_name: str, job_seed: int, prompts: list[Prompt], frames: int, between: str
) -> list[WorkItem]:
    """Sequences of frames: from a concept's prompt variant k to variant k+1 and/or new noise.

    Every frame is an item of its own (its seed is the sequence's start noise, `seed_b` its end
    noise), so frames render independently of batching and resume like any other item.
    """
    by_concept = prompts_by_concept(prompts)
    if between == "both" and all(len(variants) == 1 for variants in by_concept.values()):
        log.warning(
            "generation.interpolate: between both, but each concept has one prompt variant, so "
            "its sequences go between seeds only; set prompts.images_per_concept to 2 or more "
            "to go between prompts too"
        )
    items = []
    for variants in by_concept.values():
        for k, start in enumerate(variants):
            end = variants[(k + 1) % len(variants)] if between != "seeds" else start
            if between == "prompts" and end.text == start.text:  # its frames would be one image
                fix = (
                    "set prompts.images_per_concept to 2 or more (a sequence goes from one "
                    "prompt variant to the next, and there is one)"
                    if len(variants) == 1
                    else "give prompts.templates a second template (or attributes)"
                )
                raise SpecError(
                    f"generation.interpolate: between prompts, but concept {start.concept.name}'s "
                    f"prompt {start.text!r} is followed by itself; {fix}, or set between: both"
                )

            sequence_id = make_item_id(
                job_name,
                start.concept.id,
                start.text,
                start.variant,
                None,
                f"sequence:{between}:{frames}:{end.text}",
            )
            seed_a = item_seed(job_seed, sequence_id + ":a")
            seed_b = item_seed(job_seed, sequence_id + ":b") if between != "prompts" else seed_a
            for frame in range(frames):
                item_id = make_item_id(
                    job_name,
                    start.concept.id,
                    start.text,
                    start.variant,
                    None,
                    f"frame:{frame}:{sequence_id}",
                )
                items.append(
                    replace(
                        item_from_prompt(job_seed, start, item_id),
                        seed=seed_a,
                        sequence_id=sequence_id,
                        frame=frame,
                        frames=frames,
                        prompt_b=end.text,
                        seed_b=seed_b,
                    )
                )
    return items


def plan_table(items: list[WorkItem]) -> pa.Table:
    """The plan as a table, built a column at a time: `asdict` deep-copied every field of
    every item, most of the plan's time (3 minutes a million items)."""
    return pa.Table.from_pydict(
        {name: [getattr(item, name) for item in items] for name in PLAN_SCHEMA.names},
        schema=PLAN_SCHEMA,
    )


def write_plan(items: list[WorkItem], path: Path) -> None:
    """Write plan.parquet atomically (temp name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(plan_table(items), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_plan(path: Path) -> list[WorkItem]:
    rows = read_table(path).to_pylist()
    return [WorkItem(**{**row, "boxes": tuple(row["boxes"] or ()) or None}) for row in rows]
