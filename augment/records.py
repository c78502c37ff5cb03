"""Shared types on the lowest floor: the work item, boxes, source images and the record schema.

Every stage reads or writes these, so they live apart from every stage: a module that needs a
`WorkItem` or the shard schema imports this file and nothing else of `augment`. The plan schema
is derived from the record schema (a work item's columns are record columns, plus the few that
only planning needs), so a column is declared once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import pyarrow as pa

from augment.taxonomy.concept import Concept

#: Record columns that flag an image: exports and benchmarks leave flagged rows out.
FLAGS = ("black", "nan", "nsfw", "filtered", "duplicate", "bad_mask", "not_found")


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
    width: int | None = None  # source modes: the render size (the source's aspect kept)
    height: int | None = None
    boxes: tuple[dict, ...] | None = None  # source modes: the source's boxes, at render size
    target: str | None = None  # inpaint: "box:<index>" or "class:<concept id>"
    sequence_id: str | None = None  # interpolate: the frames of one animation share it
    frame: int | None = None
    frames: int | None = None
    prompt_b: str | None = None  # interpolate: the sequence's end prompt and seed
    seed_b: int | None = None


BOX_TYPE = pa.struct(
    [
        ("category_id", pa.int64()),
        ("bbox", pa.list_(pa.float64())),  # COCO xywh, pixels
        ("segmentation", pa.list_(pa.list_(pa.float64()))),  # COCO polygons
        ("rle", pa.string()),  # or a mask: COCO compressed RLE counts, at the image's size
        ("area", pa.float64()),  # the mask's pixels (None: no mask)
        ("score", pa.float64()),  # the labeller's confidence, where it gives one
        # who drew the box: None (the source), a segmenter ("threshold", "sam", ...) or a
        # detector ("owlv2", ...; a mask on its box is the job's segmenter's)
        ("labeller", pa.string()),
        ("instance_of", pa.string()),  # paste: the item_id of the render it was cut from
    ]
)

#: The Hugging Face `datasets` Image struct: `datasets` decodes this column as images.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

#: One Parquet row per image: the shards' schema (the source of truth of a run).
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
        ("model_hash", pa.string()),  # sha256 over the model's files (provenance)
        ("license", pa.string()),  # the model's licence, where known
        ("watermark", pa.bool_()),  # an invisible watermark was written into the image
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
        ("image", IMAGE_TYPE),
        ("clip_score", pa.float64()),
        ("concept_score", pa.float64()),  # filters: p(own concept | image)
        ("scored_as", pa.string()),  # filters: the concept the scorer reads (its top class)
        ("embedding", pa.list_(pa.float32())),  # filters: the scorer's features of the image
        ("phash", pa.int64()),  # 64-bit DCT perceptual hash (duplicates.perceptual_hash)
        ("thumb", pa.binary()),  # its 32 x 32 grey levels (duplicates.grey_levels), 1 KB
        ("black", pa.bool_()),
        ("nan", pa.bool_()),
        ("nsfw", pa.bool_()),
        ("float32_retry", pa.bool_()),  # first render NaN/black: this is the float32 re-render
        ("filtered", pa.bool_()),
        ("duplicate", pa.bool_()),  # repeats an earlier image of its concept, or a real one
        ("duplicate_of", pa.string()),  # the item_id (or real image id) it repeats
        ("mask_area", pa.float64()),  # segment: the share of the image its object's mask covers
        ("bad_mask", pa.bool_()),  # segment: mask empty, (almost) the whole image, or cut off
        ("not_found", pa.bool_()),  # labels: the detector found no box of the image's concept
        ("render_s", pa.float64()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})},
)

#: Work item fields that never become a record column: they only shape the plan.
PLAN_ONLY_FIELDS = {"variant": pa.int64(), "frames": pa.int64(), "seed_b": pa.int64()}

#: plan.parquet: one row per work item, each column typed as the record column of that name.
PLAN_SCHEMA = pa.schema(
    [
        (f.name, PLAN_ONLY_FIELDS[f.name])
        if f.name in PLAN_ONLY_FIELDS
        else RECORD_SCHEMA.field(f.name)
        for f in fields(WorkItem)
    ]
)


@dataclass(frozen=True)
class SourceBox:
    label: str  # the class name as the source spells it
    bbox: tuple[float, float, float, float]  # COCO xywh, source pixels
    mask: str | None = None  # its object's pixels: COCO compressed RLE at the annotated size


@dataclass(frozen=True)
class SourceImage:
    id: str
    location: str  # a file path, or "<parquet file>#<row>"
    width: int
    height: int
    label: str | None = None  # the image's class (image folders, Parquet rows)
    boxes: tuple[SourceBox, ...] = ()

    def main_label(self) -> str | None:
        """The image's class, else the class covering the most box area."""
        if self.label is not None:
            return self.label
        area: dict[str, float] = {}
        for box in self.boxes:
            area[box.label] = area.get(box.label, 0.0) + box.bbox[2] * box.bbox[3]
        return max(area, key=lambda k: (area[k], k)) if area else None


@dataclass(frozen=True)
class SourceTarget:
    """One thing to render from a source image: the whole image, one box, or one class."""

    image: SourceImage
    concept: Concept
    target: str | None  # None, "box:<index into boxes>" or "class:<concept id>"
    boxes: tuple[tuple[int, tuple], ...] = ()  # the image's boxes of known concepts: (id, xywh)
