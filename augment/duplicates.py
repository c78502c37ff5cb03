"""Near-duplicates: images of a run that repeat another image of their concept, or a real one.

A sampler at low guidance or a LoRA that overfits repeats itself, and a repeated image adds
nothing to a training set but weight on one example. Every record carries a perceptual hash
(`phash`, the 64-bit DCT hash that image-deduplication tools compare) and the 32 x 32 grey
thumbnail it is computed from (`thumb`), both made where the image is rendered, beside the
render loop, so the pass below reads 1 KB a record and decodes no image. The hash alone is
too coarse to decide on small images (two different 32 px sevens can share most of its bits,
and a copy shifted by a pixel can lose a third of them), so once a run's blocks are committed,
`find_duplicates` compares pixels, concept by concept:

- candidates: pairs whose 8 x 8 blurred thumbnails are close (one matrix product per concept);
- verdict: their 32 x 32 grey thumbnails, blurred by a pixel, one shifted by up to a pixel each
  way, differ by at most `PIXEL_TOLERANCE` of the images' own contrast (mean absolute
  difference over mean absolute deviation). On the digits world a planted copy with noise of
  up to 8 grey levels and a 1-pixel shift measures at most 0.05, and the closest two of 1,000
  distinct renders of one digit 0.08 (real scans: 0.10).

A duplicate is flagged `duplicate`, with `duplicate_of` the id it repeats: the first image of
its group in plan order (so the flags depend neither on which worker rendered what first nor
on how often the run was resumed), or a real image's id when a real set is given.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter
from threadpoolctl import threadpool_limits

from augment.progress import image_progress, tracked
from augment.records import FLAGS
from augment.sinks import parquet
from augment.taxonomy.listfile import slugify

#: Thumbnail side the verdict compares at (a 512 px render's 1-pixel shift is far below it).
THUMB = 32
#: The thumbnails are blurred first (pixels at THUMB size): noise averages out, shapes stay.
BLUR = 1.0
#: Duplicates: shifted mean absolute difference at most this share of the images' contrast.
PIXEL_TOLERANCE = 0.065
#: Candidates: 8 x 8 descriptors at most this far apart (RMS, in units of their contrast).
CANDIDATE_DISTANCE = 0.6


def grey_levels(image: Image.Image | np.ndarray) -> np.ndarray:
    """THUMB x THUMB grey levels (uint8), area-averaged: what the hash and the verdict start
    from. A record keeps them as `thumb` (1 KB), so the duplicate pass decodes no image."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = image.convert("L")
    if grey.size != (THUMB, THUMB):
        grey = grey.resize((THUMB, THUMB), Image.BOX)
    return np.asarray(grey)


def blurred(levels: np.ndarray) -> np.ndarray:
    """Grey levels blurred by BLUR (uint8, as PIL blurs them): what the verdict compares, as
    float32 a concept at a time. A run's pictures are held at once: 1 KB each, where float32
    took 4 KB (5 GB of a million-image run)."""
    blur = ImageFilter.GaussianBlur(BLUR)
    return np.asarray(Image.fromarray(levels).filter(blur))


def levels_hash(levels: np.ndarray) -> int:
    """The 64-bit DCT hash (pHash) of THUMB x THUMB grey levels, as a signed int64: their 8 x 8
    lowest frequencies, each bit set when above their median."""
    from scipy.fft import dctn

    low = dctn(levels.astype(np.float32), norm="ortho")[:8, :8]
    return int(np.packbits((low > np.median(low)).ravel()).view(">i8")[0])


def perceptual_hash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit DCT hash (pHash) of an image: `levels_hash` of its `grey_levels`."""
    return levels_hash(grey_levels(image))


def contrasts(thumbs: np.ndarray) -> np.ndarray:
    """Each stacked thumbnail's mean absolute deviation."""
    return np.abs(thumbs - thumbs.mean(axis=(1, 2), keepdims=True)).mean(axis=(1, 2))


def shifted_distances(
    earlier: np.ndarray, earlier_contrasts: np.ndarray, b: np.ndarray, b_contrast: float
) -> np.ndarray:
    """How far each of the stacked `earlier` thumbnails is from `b`: the least mean absolute
    difference over shifts of up to one pixel, as a share of the two's mean absolute deviation
    (0: the same picture), for all of them at once."""
    core = earlier[:, 1:-1, 1:-1]
    best = np.min(
        [
            np.abs(core - b[1 + dy : THUMB - 1 + dy, 1 + dx : THUMB - 1 + dx]).mean(axis=(1, 2))
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ],
        axis=0,
    )
    scale = (earlier_contrasts + b_contrast) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = best / scale
    return np.where(scale == 0, np.where(best == 0, 0.0, np.inf), distance)


#: The side of the blocks whose means bound the verdict from below (the core's 30 px: 6 x 6).
BLOCK = 5
#: Every shift the verdict tries, (dy, dx).
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def block_means(images: np.ndarray) -> np.ndarray:
    """Each stacked (n, 30, 30) image's BLOCK x BLOCK means, flattened: (n, 36)."""
    n, side = len(images), images.shape[1] // BLOCK
    return images.reshape(n, side, BLOCK, side, BLOCK).mean(axis=(2, 4)).reshape(n, -1)


def cores_and_shifts(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block means of each thumbnail's core (n, 36), and of its shifted windows, the ones
    `shifted_distances` compares an earlier core with (n, 9, 36)."""
    cores = block_means(thumbs[:, 1:-1, 1:-1])
    shifts = np.stack(
        [
            block_means(thumbs[:, 1 + dy : THUMB - 1 + dy, 1 + dx : THUMB - 1 + dx])
            for dy, dx in SHIFTS
        ],
        axis=1,
    )
    return cores, shifts


def distance_floor(
    earlier_cores: np.ndarray,
    earlier_contrasts: np.ndarray,
    b_shifts: np.ndarray,
    b_contrast: float,
) -> np.ndarray:
    """A lower bound of `shifted_distances` at 1/25 of its cost: the mean absolute difference of
    two images is at least that of their block means (the mean of |x| over a block is at least
    |the mean of x|). A candidate above the tolerance here is above it there: skipped, exactly.
    Images that share a layout passed the 8 x 8 gate by the thousand (43 % of the pairs of one
    concept), and the full verdict of each took an hour at 20,000 images."""
    best = np.abs(earlier_cores[:, None, :] - b_shifts[None]).mean(axis=2).min(axis=1)
    scale = (earlier_contrasts + b_contrast) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = best / scale
    return np.where(scale == 0, 0.0, floor)  # no contrast: left to the verdict


def descriptor(thumb: np.ndarray) -> np.ndarray:
    """64 numbers: the thumbnail at 8 x 8, centred and scaled by its contrast."""
    small = thumb.reshape(8, THUMB // 8, 8, THUMB // 8).mean(axis=(1, 3)).ravel()
    small = small - small.mean()
    return small / max(float(np.abs(small).mean()), 1e-6)


@dataclass
class Picture:
    """One image to compare: its id, its concept, and its blurred grey thumbnail (all that is
    kept of its pixels, so a run's worth of pictures is a few KB each).

    `concept` is the slug of the concept's name, all a real pool's class says of it; `concept_id`
    (a run's concepts, and the sources rendered for them) keeps apart two concepts whose names
    slug alike ("C++" and "C#"), whose images are not each other's repeats."""

    id: str
    concept: str
    thumb: np.ndarray
    concept_id: str | None = None

    @classmethod
    def of(
        cls,
        id: str,
        concept: str,
        image: bytes | np.ndarray | Image.Image,
        concept_id: str | None = None,
    ) -> Picture:
        """The picture of an image: PNG (or any encoded) bytes, pixels, or a PIL image."""
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        return cls(id, concept, blurred(grey_levels(image)), concept_id)

    @classmethod
    def of_levels(
        cls, id: str, concept: str, thumb: bytes, concept_id: str | None = None
    ) -> Picture:
        """The picture of a record's stored `thumb` (its `grey_levels`' bytes)."""
        levels = np.frombuffer(thumb, dtype=np.uint8).reshape(THUMB, THUMB)
        return cls(id, concept, blurred(levels), concept_id)


#: Pictures whose candidate distances one matrix product computes at once (against every
#: earlier one: a block of CANDIDATE_BLOCK columns, 1 MB per 1,000 earlier pictures).
CANDIDATE_BLOCK = 128


def find_duplicates(
    pictures: list[Picture],
    real: list[Picture] = (),
    advance: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """id -> the id it repeats, for each picture that repeats a real picture of its concept
    or an earlier picture of its concept (list order; real ones count as earlier).
    `advance(n)` is told of each block of n pictures compared."""
    by_concept: dict[tuple[str, str | None], list[Picture]] = {}
    for picture in pictures:
        by_concept.setdefault((picture.concept, picture.concept_id), []).append(picture)
    known_by_concept: dict[str, list[Picture]] = {}
    for picture in real:
        known_by_concept.setdefault(picture.concept, []).append(picture)
    repeats: dict[str, str] = {}
    # the block products are small: BLAS threads beside a busy core cost more than they give
    # (4,000 alike thumbnails beside a busy core: 0.65-0.75 s with 2 threads, 0.52 s with one)
    with threadpool_limits(1, user_api="blas"):
        for (concept, concept_id), rendered in by_concept.items():
            known = [  # a real pool's class by name; a source by its concept, where it has one
                p for p in known_by_concept.get(concept, []) if p.concept_id in (None, concept_id)
            ]
            concept_repeats(known + rendered, len(known), repeats, advance)
    return repeats


def concept_repeats(
    group: list[Picture],
    first: int,
    repeats: dict[str, str],
    advance: Callable[[int], None] | None = None,
) -> None:
    """`find_duplicates` within one concept: each picture of `group` from `first` on that
    repeats an earlier one goes into `repeats` (id -> its original's id)."""
    thumbs = np.stack([p.thumb for p in group]).astype(np.float32)
    spread = contrasts(thumbs)
    codes = np.stack([descriptor(t) for t in thumbs])
    squares = (codes**2).sum(axis=1)
    cores, shifts = cores_and_shifts(thumbs)
    for start in range(first, len(group), CANDIDATE_BLOCK):
        stop = min(start + CANDIDATE_BLOCK, len(group))
        gaps = (  # a row per picture of the block, a column per picture up to its end
            squares[start:stop, None]
            + squares[None, :stop]
            - 2 * codes[start:stop] @ codes[:stop].T
        )
        near = np.sqrt(np.maximum(gaps, 0) / codes.shape[1]) <= CANDIDATE_DISTANCE
        for j in range(start, stop):
            candidates = np.flatnonzero(near[j - start, :j])
            # an id met twice (a shard copied in, which a run refuses) is no repeat of itself
            candidates = candidates[[group[c].id != group[j].id for c in candidates]]
            if not candidates.size:
                continue
            floor = distance_floor(cores[candidates], spread[candidates], shifts[j], spread[j])
            candidates = candidates[floor <= PIXEL_TOLERANCE * (1 + 1e-3)]  # float rounding
            if not candidates.size:
                continue
            distances = shifted_distances(
                thumbs[candidates], spread[candidates], thumbs[j], spread[j]
            )
            close = np.flatnonzero(distances <= PIXEL_TOLERANCE)
            if close.size:  # the earliest of them is the original
                earlier = group[candidates[close[0]]].id
                repeats[group[j].id] = repeats.get(earlier, earlier)
        if advance is not None:
            advance(stop - start)


#: Flags that take an image out of the comparison: a black or filtered image is nobody's
#: original, and flagging its copies would drop the only usable image of a pair.
OTHER_FLAGS = tuple(flag for flag in FLAGS if flag != "duplicate")


def shard_pictures(path: Path) -> tuple[list[Picture], dict[str, tuple[bool, str | None]]]:
    """A shard's unflagged pictures (from the stored thumbnails; a record written without one
    is decoded), and every record's current `duplicate` and `duplicate_of` by item_id."""
    columns = ["item_id", "concept_id", "concept_name", "thumb", "duplicate", "duplicate_of"]
    columns += OTHER_FLAGS
    records = parquet.read_shard(path, columns).to_pylist()
    if any(record["thumb"] is None for record in records):  # older shards: decode the images
        images = parquet.read_shard(path, ["image"]).column("image").to_pylist()
    pictures = []
    for index, record in enumerate(records):
        if any(record[flag] for flag in OTHER_FLAGS):
            continue
        item_id, concept, concept_id = (
            record["item_id"],
            slugify(record["concept_name"]),
            record["concept_id"],
        )
        if record["thumb"] is not None:
            pictures.append(Picture.of_levels(item_id, concept, record["thumb"], concept_id))
        else:
            pictures.append(Picture.of(item_id, concept, images[index]["bytes"], concept_id))
    current = {r["item_id"]: (r["duplicate"], r["duplicate_of"]) for r in records}
    return pictures, current


def flag_duplicates(
    shards_dir: Path,
    order: list[str] | None = None,
    real: list[Picture] = (),
    rewritten: set[str] | None = None,
) -> int:
    """Set `duplicate` and `duplicate_of` on every committed record of a run, rewriting (in
    place, atomically) only the shards whose flags change; returns how many are duplicates.
    `order`: the plan's item_ids, which decides which of a group is the original (then item_id).
    Only the shards that change are read whole; their names go into `rewritten`, if given."""
    pictures: list[Picture] = []
    flags: dict[Path, dict[str, tuple[bool, str | None]]] = {}
    for path in tracked(parquet.shard_paths(shards_dir), "duplicates: reading", unit="shard"):
        found, flags[path] = shard_pictures(path)
        pictures.extend(found)
    rank = {item_id: i for i, item_id in enumerate(order or ())}
    pictures.sort(key=lambda p: (rank.get(p.id, len(rank)), p.id))
    with image_progress(len(pictures), "duplicates: comparing", transient=True) as advance:
        repeats = find_duplicates(pictures, list(real), advance)
    for path, current in flags.items():
        if all(current[i] == (i in repeats, repeats.get(i)) for i in current):
            continue
        table = parquet.read_shard(path)
        ids = table.column("item_id").to_pylist()
        for name, values in (
            ("duplicate", [item_id in repeats for item_id in ids]),
            ("duplicate_of", [repeats.get(item_id) for item_id in ids]),
        ):
            index = table.schema.get_field_index(name)
            field = table.schema.field(index)
            table = table.set_column(index, field, pa.array(values, type=field.type))
        parquet.write_table(path.parent, path.name, table)
        if rewritten is not None:
            rewritten.add(path.name)
    return len(repeats)
