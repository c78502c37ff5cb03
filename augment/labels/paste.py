"""Copy-paste composition: a job's segmented renders pasted onto real background images.

Render -> Segment -> Paste (X-Paste's recipe, and Deng & Lu's for weeds): each rendered object
with a mask (`segment:`) is an instance; each output image is a real background with 1..k
instances pasted at seeded scales, places and flips, never covering more than `max_overlap` of a
box already there (the background's own, or an instance pasted before), blended with a hard or
feathered mask. The image keeps the background's own boxes (those of the job's concepts) and
gains one box + RLE mask per pasted instance (`labeller: paste`, `instance_of`: the render it was
cut from); a later instance that covers part of an earlier one trims that one's mask.

The result is an output folder of its own, OUT/paste (shards, manifest.json, exports), resumed
like a run: an item already in a shard is not pasted again. A background that cannot be decoded
is named in its manifest's failures and the other items go on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from augment.config import JobSpec, PasteSpec
from augment.errors import OutputError, first_line
from augment.labels.autolabel import DETECTORS
from augment.labels.segment import decode_rle, encode_rle, mask_box
from augment.provenance import Provenance
from augment.records import SourceImage
from augment.taxonomy import Concept

log = logging.getLogger(__name__)

#: Labellers whose boxes carry the object's own mask (what the segment stage writes): the
#: segmenter's own box, or the detector's box the mask was given to.
SEGMENTERS = ("threshold", "clipseg", "sam")
MASKED_BY = SEGMENTERS + DETECTORS
#: Places tried for an instance before it is left out.
PLACEMENT_TRIES = 20
CUT_MARGIN = 2  # pixels of the render kept around its mask's box


@dataclass(frozen=True)
class Instance:
    """A rendered object cut to its mask's box and a margin of `CUT_MARGIN` pixels around it
    (where the render has them): a feathered paste shows the render's own soft edge there, not
    the background."""

    item_id: str
    category_id: int
    concept: Concept | None
    pixels: np.ndarray  # h x w x 3 uint8
    mask: np.ndarray  # h x w bool


@dataclass(frozen=True)
class PasteItem:
    item_id: str
    background_id: str
    variant: int
    seed: int


@dataclass
class PasteResult:
    out_dir: Path
    planned: int
    skipped: int
    pasted: int  # images written this time
    instances: int  # instances pasted into them
    failed: int
    seconds: float
    outputs: dict


def load_instances(out_dir: Path, concepts: list[Concept]) -> list[Instance]:
    """Every unflagged render of a run that has a mask, cut to its mask's box."""
    from augment.sinks.rows import export_records

    by_category = {c.category_id: c for c in concepts}
    instances = []
    for record in export_records(out_dir):
        box = next(
            (b for b in record["boxes"] or [] if b["rle"] and b["labeller"] in MASKED_BY), None
        )
        if box is None:
            continue
        mask = decode_rle(box["rle"], record["height"], record["width"])
        if not mask.any():
            continue
        x, y, w, h = (int(v) for v in mask_box(mask))  # a detector's box may not be the mask's
        x0, y0 = max(0, x - CUT_MARGIN), max(0, y - CUT_MARGIN)
        x1 = min(record["width"], x + w + CUT_MARGIN)
        y1 = min(record["height"], y + h + CUT_MARGIN)
        pixels = np.asarray(Image.open(io.BytesIO(record["image"]["bytes"])).convert("RGB"))
        instances.append(
            Instance(
                record["item_id"],
                box["category_id"],
                by_category.get(box["category_id"]),
                pixels[y0:y1, x0:x1].copy(),
                mask[y0:y1, x0:x1].copy(),
            )
        )
    if not instances:
        raise OutputError(no_instances(out_dir))
    return sorted(instances, key=lambda i: i.item_id)


def no_instances(out_dir: Path) -> str:
    """Why a run gives paste nothing to cut: its renders' flags, by the count of each (a
    detector that found nothing was told as masks to fix)."""
    from augment.records import FLAGS
    from augment.sinks.parquet import count_true

    rows, counts = count_true(out_dir / "shards", list(FLAGS))
    flagged = ", ".join(f"{counts[f]} {f}" for f in FLAGS if counts[f])
    if counts.get("not_found"):
        fix = (
            "the labels: detector found no box of the image's concept in them (not_found): "
            "lower labels.threshold, or check the detector on a few renders"
        )
    elif counts.get("bad_mask"):
        fix = "check segment: (method, threshold, min_area, max_area, max_border)"
    else:
        fix = "check segment: (method, threshold) on a few renders"
    return (
        f"{out_dir} holds no segmented render to paste: of its {rows} renders, "
        f"{flagged or 'none flagged, but no mask was kept'}; {fix}"
    )


def paste_plan(job_name: str, job_seed: int, backgrounds: list[SourceImage], per: int):
    """One item per (background, variant); ids and seeds as the plan's contract makes them."""
    from augment.planning import item_seed, make_item_id

    items = []
    for background in backgrounds:
        for variant in range(per):
            item_id = make_item_id(job_name, "paste", "", variant, background.id)
            items.append(PasteItem(item_id, background.id, variant, item_seed(job_seed, item_id)))
    return items


def shared_share(a: list[float], b: list[float]) -> float:
    """The larger of the shares of `a` and of `b` that the two boxes share."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / max(min(a[2] * a[3], b[2] * b[3]), 1e-9)


#: The fewest pixels a pasted object's shorter side may span: on a 7 x 5 background, objects
#: of one pixel were pasted and labelled.
MIN_PASTED_SIDE = 4


def paste_onto(
    background: np.ndarray,
    taken: list[list[float]],
    instances: list[Instance],
    settings: PasteSpec,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[Instance, np.ndarray]]]:
    """Paste 1..k instances onto `background` (H x W x 3 uint8), avoiding the `taken` boxes:
    the composite and each pasted instance's full-size mask (trimmed where later ones cover)."""
    height, width = background.shape[:2]
    canvas = background.astype(np.float32)
    taken = list(taken)
    pasted: list[tuple[Instance, np.ndarray]] = []
    low, high = settings.instances
    for _ in range(int(rng.integers(low, high + 1))):
        instance = instances[int(rng.integers(len(instances)))]
        longer = rng.uniform(*settings.scale) * min(height, width)
        factor = longer / max(mask_box(instance.mask)[2:])  # the object's side, not the cut's
        size = (
            max(1, round(instance.mask.shape[1] * factor)),
            max(1, round(instance.mask.shape[0] * factor)),
        )
        pixels = np.asarray(Image.fromarray(instance.pixels).resize(size, Image.BICUBIC))
        mask = np.asarray(
            Image.fromarray(instance.mask.astype(np.uint8) * 255).resize(size, Image.BILINEAR)
        )
        if settings.flip and rng.random() < 0.5:
            pixels, mask = pixels[:, ::-1], mask[:, ::-1]
        if size[0] > width or size[1] > height or not (mask > 127).any():
            continue
        own = mask_box(mask > 127)
        if min(own[2], own[3]) < MIN_PASTED_SIDE:  # a background too small for it: no object
            continue
        for _try in range(PLACEMENT_TRIES):
            x, y = (
                int(rng.integers(0, width - size[0] + 1)),
                int(rng.integers(0, height - size[1] + 1)),
            )
            box = [x + own[0], y + own[1], own[2], own[3]]
            if all(shared_share(box, other) <= settings.max_overlap for other in taken):
                break
        else:
            continue
        alpha = np.zeros((height, width), np.float32)
        alpha[y : y + size[1], x : x + size[0]] = mask / 255.0
        hard = alpha > 0.5
        if settings.blend == "gaussian":
            blurred = Image.fromarray((alpha * 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(settings.feather)
            )
            alpha = np.asarray(blurred, np.float32) / 255.0
        # the canvas itself around the cut: a feather reaching past the cut blends the canvas
        # with itself there, where zeros drew a dark seam along every cut the mask touches
        placed = canvas.copy()
        placed[y : y + size[1], x : x + size[0]] = pixels
        canvas = alpha[..., None] * placed + (1 - alpha[..., None]) * canvas
        for _, earlier in pasted:
            earlier &= ~hard
        pasted.append((instance, hard))
        taken.append(box)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), pasted


def hidden(bbox, covered: np.ndarray) -> bool:
    """A background box every pixel of which a pasted instance covers: nothing of its object
    is left to see, so its label would teach the detector the instance's pixels as it (as an
    earlier instance that a later one covers is dropped)."""
    x, y, w, h = (int(round(v)) for v in bbox)
    region = covered[max(y, 0) : y + h, max(x, 0) : x + w]
    return region.size > 0 and bool(region.all())


def paste_record(
    item: PasteItem,
    background: SourceImage,
    known: list[tuple[int, tuple, np.ndarray | None]],
    pixels: np.ndarray,
    pasted: list[tuple[Instance, np.ndarray]],
    settings: PasteSpec,
    seconds: float,
    provenance: Provenance,
) -> dict:
    """A shard record for a composite: the background's boxes of known concepts, then one box
    with its mask per pasted instance still visible. Its concept is its first instance's. Its
    PNG says what it is made of (`augment.provenance.composite_chunks`)."""
    from augment.generate.engine import encode_png
    from augment.provenance import composite_chunks

    covered = np.zeros(pixels.shape[:2], bool)
    for _, mask in pasted:
        covered |= mask
    boxes = []
    for category_id, bbox, mask in known:  # a background object's mask: what stays seen
        box = {"category_id": category_id, "bbox": list(bbox), "segmentation": []}
        if mask is not None:
            seen = mask & ~covered
            if seen.any():
                boxes.append({**box, "rle": encode_rle(seen), "area": float(seen.sum())})
        elif not hidden(bbox, covered):
            boxes.append(box)
    for instance, mask in pasted:
        box = mask_box(mask)
        if box is not None:
            boxes.append(
                {
                    "category_id": instance.category_id,
                    "bbox": box,
                    "segmentation": [],
                    "rle": encode_rle(mask),
                    "area": float(mask.sum()),
                    "labeller": "paste",
                    "instance_of": instance.item_id,
                }
            )
    # the first instance still seen (a later one may cover an earlier one whole)
    first = next((instance.concept for instance, mask in pasted if mask.any()), None)
    height, width = pixels.shape[:2]
    chunks = composite_chunks(
        item.item_id, provenance, background.id, [instance.item_id for instance, _ in pasted]
    )
    return {
        "item_id": item.item_id,
        "concept_id": first.id if first else None,
        "concept_name": first.name if first else "background",
        "synset": first.synset if first else None,
        "category_id": first.category_id if first else None,
        "prompt": "",
        "negative_prompt": "",
        "mode": "paste",
        "settings": settings.model_dump_json(),
        "seed": item.seed,
        "width": width,
        "height": height,
        "source_image_id": background.id,
        "boxes": boxes,
        "model": provenance.model,
        "model_hash": provenance.model_hash,
        "license": provenance.license,
        "image": {"bytes": encode_png(pixels, chunks), "path": f"{item.item_id}.png"},
        "black": False,
        "nan": False,
        "nsfw": False,
        "filtered": False,
        "duplicate": False,
        "bad_mask": False,
        "not_found": False,
        "render_s": seconds,
    }


#: What OUT/paste holds of augment's, besides its exports.
#: What augment writes in OUT/paste (the lock: an export or gallery of it takes OUT/paste's).
PASTE_FILES = (
    "paste.json",
    "manifest.json",
    "shards/",
    "quarantine/",
    "gallery/",
    ".augment.lock",
)


def check_paste_folder(folder: Path) -> None:
    """OUT/paste holds only what augment wrote there: a paste made again (other renders, or
    --force) replaces the whole folder, which deleted the user's notes and benchmark results."""
    from augment.gallery import GALLERY_NAMES
    from augment.sinks import EXPORT_NAMES, check_exports_replaceable, check_own_folder

    ours = (*PASTE_FILES, *(f"{name}/" for name in EXPORT_NAMES))
    check_own_folder(folder, ours, "paste", writer="augment paste")
    check_exports_replaceable(folder, list(EXPORT_NAMES))
    check_own_folder(folder / "gallery", GALLERY_NAMES, "gallery")


def prepare_paste_output(
    folder: Path, spec: JobSpec, force: bool, instances: list[Instance]
) -> None:
    """Create OUT/paste, or check it holds this same paste (then it resumes). Other `paste:`
    settings are refused (`force` starts over). A paste of other renders (a run with --limit,
    then the whole run), or one an earlier augment made, is made again: it is derived from
    OUT's images alone, and nothing of the user's is lost."""
    check_paste_folder(folder)
    marker = folder / "paste.json"
    pool = instance_pool(instances)
    settings = spec.paste.model_dump(mode="json")
    if force and folder.exists():
        shutil.rmtree(folder)
    try:
        saved = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError) as exc:  # derived from OUT's images alone: pasted again
        saved = first_line(exc)
    if saved is not None and not isinstance(saved, dict):
        reason = saved if isinstance(saved, str) else "not a paste's record"
        log.warning("%s cannot be read (%s): pasting again", marker, reason)
        shutil.rmtree(folder)
    elif saved is not None:
        before = saved.get("paste", settings)  # an earlier augment did not record them
        if before != settings:
            changed = sorted(
                k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k)
            )
            raise OutputError(
                f"{folder} holds a paste made with other paste: settings ({', '.join(changed)}); "
                "`augment paste JOB --force` deletes it and pastes again"
            )
        if (saved.get("paste_hash"), saved.get("instances")) != (spec.paste_hash(), pool):
            log.warning(
                "%s was pasted from other renders, or by an earlier augment: pasting again", folder
            )
            shutil.rmtree(folder)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {
                "paste_hash": spec.paste_hash(),
                "job": spec.name,
                "instances": pool,
                "paste": settings,
            }
        )
    )


def instance_pool(instances: list[Instance]) -> str:
    """A hash of which renders a paste draws from."""
    ids = sorted(instance.item_id for instance in instances)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def known_boxes(
    background: SourceImage, index: dict[str, Concept]
) -> list[tuple[int, tuple, str | None]]:
    """The background's boxes whose label is a concept of the job (`concept_index`):
    (category_id, xywh, its mask's RLE counts at the annotated size, or None)."""
    from augment.taxonomy.listfile import slugify

    return [
        (index[slugify(box.label)].category_id, box.bbox, box.mask)
        for box in background.boxes
        if slugify(box.label) in index
    ]


def background_mask(counts: str | None, annotated: tuple[int, int], size: tuple[int, int]):
    """A background object's mask at the pixels' size (`annotated`, `size`: width, height),
    from its RLE at the annotated size; None where it has none."""
    if counts is None:
        return None
    mask = decode_rle(counts, annotated[1], annotated[0])
    if tuple(size) != tuple(annotated):  # a file resized in proportion, as its boxes are
        mask = np.asarray(Image.fromarray(mask).resize(tuple(size), Image.NEAREST))
    return mask
