"""Benchmark inputs: a real labelled set split into train pool and held-out test, and a
synthetic set read from an `augment` output folder.

Real sources: a built-in set (``digits``: the embedded world registers it, with its fixed
pool/test splits), an ImageFolder tree (one folder per class), or a COCO annotations.json (an
image's label is its `category_id` key, else the category of its largest box). The test split
is real images only; synthetic images go to training alone, and `check_no_leak` refuses a
synthetic set that contains a test image; `renders_of_held_out` names the synthetic images
rendered from one (img2img, inpaint, controlnet, a paste background), which are left out.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from augment import registry
from augment.classifier import to_array
from augment.errors import AugmentError, some_of
from augment.records import FLAGS
from augment.sinks import export_records, run_categories
from augment.sources import DECODE_ERRORS, IMAGE_SUFFIXES, shown, visible, warn_nested
from augment.taxonomy.listfile import slugify

log = logging.getLogger(__name__)


@dataclass
class Classes:
    """The label space: names (slugs match synthetic concept names), synsets, hypernym paths."""

    names: list[str]
    synsets: list[str | None]
    hypernyms: list[tuple[str, ...]] = field(default_factory=list)

    def index(self) -> dict[str, int]:
        return {slugify(name): i for i, name in enumerate(self.names)}


@dataclass
class ImageSet:
    images: np.ndarray  # N x S x S x 3, uint8
    labels: np.ndarray  # class indices
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> ImageSet:
        return ImageSet(self.images[rows], self.labels[rows], [self.ids[i] for i in rows])

    @staticmethod
    def concat(*sets: ImageSet) -> ImageSet:
        sets = tuple(s for s in sets if len(s))
        return ImageSet(
            np.concatenate([s.images for s in sets]),
            np.concatenate([s.labels for s in sets]),
            [i for s in sets for i in s.ids],
        )


@dataclass
class RealData:
    classes: Classes
    pool: ImageSet  # real images a classifier may train on
    test: ImageSet  # held out: never trained on, never synthetic
    split: dict  # what was split how, saved beside the results
    validation: ImageSet | None = None  # held out too: settings are chosen on it, not on test


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # one at least to test, and one at least left to train on (2 of 2 at 0.8 left none)
        test.extend(members[: min(len(members) - 1, max(1, round(len(members) * test_fraction)))])
    test_rows = np.sort(np.array(test))
    pool_rows = np.setdiff1d(np.arange(len(labels)), test_rows)
    return pool_rows, test_rows


def load_imagefolder_real(root: Path, size: int, test_fraction: float, seed: int) -> RealData:
    folders = [p for p in visible(root) if p.is_dir()]
    if len(folders) < 2:
        raise AugmentError(f"{root}: an ImageFolder needs one sub-folder per class (2 or more)")
    named: dict[str, Path] = {}
    for folder in folders:  # a run reads both as one concept: two classes here would differ
        other = named.setdefault(slugify(folder.name), folder)
        if other != folder:
            raise AugmentError(
                f"{root}: class folders {other.name!r} and {folder.name!r} name one class; "
                "merge them, or rename one"
            )
    loose = [p for p in visible(root) if p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        log.warning(
            "%d image(s) right in %s have no class and are not read, first %s",
            len(loose),
            root,
            loose[0].name,
        )
    warn_nested(folders)
    images, labels, ids = [], [], []
    for label, folder in enumerate(folders):
        for path in visible(folder):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(to_array(open_image(path), size))
                labels.append(label)
                ids.append(str(path.relative_to(root)))
    present = set(labels)
    empty = [f.name for label, f in enumerate(folders) if label not in present]
    if empty:
        raise AugmentError(
            f"{root}: class folder {empty[0]} holds no image "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add its images, or remove the folder"
        )
    classes = Classes([f.name for f in folders], [None] * len(folders), [()] * len(folders))
    return split_real(
        classes, ImageSet(np.stack(images), np.array(labels), ids), root, test_fraction, seed
    )


def check_box(box: list, size: tuple | None, wrong, where: str) -> None:
    """A box has a width and a height, and lies on its image (of `size`, where given; a
    pixel's rounding over the edge is let pass)."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
        raise wrong(f"{where} has bbox {box}: not four numbers")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise wrong(f"{where} has bbox {box}, of no width or height")
    if size and (x < -1 or y < -1 or x + w > size[0] + 1 or y + h > size[1] + 1):
        raise wrong(f"{where} has bbox {box}, outside its {size[0]}x{size[1]} image")


def read_coco(path: Path, boxes: bool = False) -> dict:
    """A COCO annotations file, checked for what the benchmarks read (images with ids and file
    names, categories with ids and names, annotations of known images and categories, with a
    box where `boxes`), or one line naming the file and what is wrong."""

    def wrong(what: str) -> AugmentError:
        return AugmentError(f"{path}: not a COCO annotations file the benchmark can read: {what}")

    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise wrong(f"cannot be read ({exc})") from None
    if not isinstance(document, dict):
        raise wrong("its top level is not an object with images, categories and annotations")
    for key, fields in (("images", ("id", "file_name")), ("categories", ("id", "name"))):
        entries = document.get(key)
        if not isinstance(entries, list) or not entries:
            raise wrong(f"no {key} list, or an empty one")
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise wrong(f"{key}[{number}] lacks {' or '.join(fields)}")
    image_ids = {image["id"] for image in document["images"]}
    sizes = {
        i["id"]: (i["width"], i["height"])
        for i in document["images"]
        if {"width", "height"} <= i.keys()
    }
    category_ids = {category["id"] for category in document["categories"]}
    annotations = document.setdefault("annotations", [])
    if not isinstance(annotations, list):
        raise wrong("annotations is not a list")
    for number, ann in enumerate(annotations):
        where = f"annotations[{number}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise wrong(f"{where} lacks image_id or category_id")
        if ann["category_id"] not in category_ids:
            raise wrong(f"{where} has category_id {ann['category_id']}, not among the categories")
        if ann["image_id"] not in image_ids:
            raise wrong(f"{where} has image_id {ann['image_id']}, not among the images")
        box = ann.get("bbox")
        has_box = isinstance(box, list) and len(box) == 4
        if (boxes or not ann.get("area")) and not has_box:
            raise wrong(f"{where} has no bbox [x, y, width, height]")
        if boxes:  # ultralytics dropped an image with a box off it, from training and val
            check_box(box, sizes.get(ann["image_id"]), wrong, where)
    if boxes:  # a box is read against its image's size (YOLO's labels are fractions of it)
        for number, image in enumerate(document["images"]):
            if not {"width", "height"} <= image.keys():
                raise wrong(
                    f"images[{number}] (id {image['id']!r}) has no width and height; give each "
                    "image its size in pixels, as COCO does"
                )
    return document


def load_coco_real(annotations: Path, size: int, test_fraction: float, seed: int) -> RealData:
    document = read_coco(annotations)
    categories = sorted(document["categories"], key=lambda c: c["id"])
    position = {c["id"]: i for i, c in enumerate(categories)}
    largest: dict[int, tuple[float, int]] = {}
    for ann in document.get("annotations", []):
        area = ann.get("area") or ann["bbox"][2] * ann["bbox"][3]
        if area > largest.get(ann["image_id"], (-1.0, 0))[0]:
            largest[ann["image_id"]] = (area, ann["category_id"])
    images, labels, ids = [], [], []
    folder = annotations.parent / "images"
    for entry in document["images"]:
        category = entry.get("category_id")  # 0 is a category (read as none, its images lost)
        if category is None:
            category = largest.get(entry["id"], (0, None))[1]
        if category is None:
            continue
        images.append(to_array(open_image(folder / entry["file_name"]), size))
        labels.append(position[category])
        ids.append(str(entry["id"]))
    classes = Classes(
        [c["name"] for c in categories],
        [c.get("synset") for c in categories],
        [tuple(c.get("hypernyms") or ()) for c in categories],
    )
    if not images:
        raise AugmentError(
            f"{annotations}: no image has a category (an image's category_id, or an annotation "
            "of it): the classifier benchmark has nothing to learn"
        )
    every = ImageSet(np.stack(images), np.array(labels), ids)
    classes, every = without_empty_classes(classes, every, annotations)
    return split_real(classes, every, annotations, test_fraction, seed)


def without_empty_classes(classes: Classes, every: ImageSet, source: Path):
    """A COCO file's categories that no image has are not classes (said): the classifier had
    an output for them, and the report a class that was never tested."""
    present = np.unique(every.labels)
    if len(present) == len(classes.names):
        return classes, every
    empty = [name for i, name in enumerate(classes.names) if i not in set(present.tolist())]
    log.warning(
        "%s: %d categories have no image and are left out of the classes: %s",
        source,
        len(empty),
        some_of(empty, 5),
    )
    kept = Classes(
        [classes.names[i] for i in present],
        [classes.synsets[i] for i in present],
        [classes.hypernyms[i] for i in present] if classes.hypernyms else [],
    )
    position = {old: new for new, old in enumerate(present.tolist())}
    labels = np.array([position[label] for label in every.labels.tolist()])
    return kept, ImageSet(every.images, labels, every.ids)


def split_real(classes, every: ImageSet, source: Path, test_fraction: float, seed: int) -> RealData:
    counts = np.bincount(every.labels, minlength=len(classes.names))
    few = [name for name, count in zip(classes.names, counts, strict=True) if 0 < count < 2]
    if few:
        raise AugmentError(
            f"{source}: class {few[0]} has one image ({len(few)} classes in all): each class "
            "needs 2 or more, one for the held-out test set and one to train on"
        )
    pool_rows, test_rows = stratified_split(every.labels, test_fraction, seed)
    split = {
        "source": str(source),
        "seed": seed,
        "test_fraction": test_fraction,
        "pool": [every.ids[i] for i in pool_rows],
        "test": [every.ids[i] for i in test_rows],
    }
    return RealData(classes, every.subset(pool_rows), every.subset(test_rows), split)


def open_image(path: Path | str, data: bytes | None = None) -> Image.Image:
    """An image decoded in full (a file, or `data` read from `path`); an error naming it."""
    try:
        return shown(Image.open(io.BytesIO(data) if data is not None else path))
    except DECODE_ERRORS as exc:
        raise AugmentError(f"{path}: not a readable image ({exc}); remove or replace it") from None


def load_real(source: str, size: int, test_fraction: float = 0.3, seed: int = 0) -> RealData:
    """A built-in real set (`digits`, with its own fixed splits), an ImageFolder directory, or a
    COCO annotations.json."""
    name = source.removeprefix("builtin:")
    if name in registry.names("real"):
        return registry.build("real", name, "--real")(size)
    path = Path(source)
    if path.is_dir() and (path / "annotations.json").is_file():
        path = path / "annotations.json"
    if path.is_file() and path.suffix == ".json":
        return load_coco_real(path, size, test_fraction, seed)
    if path.is_dir():
        return load_imagefolder_real(path, size, test_fraction, seed)
    builtins = ", ".join(registry.names("real")) or "none installed"
    raise AugmentError(
        f"real data '{source}' not found: give a built-in set ({builtins}), an ImageFolder "
        "directory, or a COCO annotations.json (with images/ beside it)"
    )


def load_synthetic(out_dir: Path, classes: Classes, size: int) -> ImageSet:
    """Unflagged images of an `augment run` output, labelled by concept name. None is an error
    that says why: no concept is a real class, or every image of one is flagged (by which)."""
    run_categories(out_dir)  # a finished run, or a clear error
    index = classes.index()
    images, labels, ids = [], [], []
    matched, flagged, unmatched = 0, Counter(), Counter()
    for record in export_records(out_dir, include_flagged=True):
        label = index.get(slugify(record["concept_name"]))
        if label is None:
            unmatched[record["concept_name"]] += 1
            continue
        matched += 1
        flags = [flag for flag in FLAGS if record.get(flag)]
        if flags:
            flagged.update(flags)
            continue
        where = f"{out_dir} item {record['item_id']}"
        images.append(to_array(open_image(where, record["image"]["bytes"]), size))
        labels.append(label)
        ids.append(record["item_id"])
    if not images:
        raise AugmentError(no_synthetic_image(out_dir, classes, matched, flagged))
    if unmatched:  # a misspelt concept ("sevn") lost its images without a word
        log.warning(
            "%d images of %s are of concepts no real class is named like, and are not used: "
            "%s (concept names must match the real class names)",
            unmatched.total(),
            out_dir,
            some_of(sorted(unmatched), 5),
        )
    return ImageSet(np.stack(images), np.array(labels), ids)


def no_synthetic_image(out_dir: Path, classes: Classes, matched: int, flagged: Counter) -> str:
    """Why a run gives a benchmark no image: its concepts are not the real classes, or the
    images of those are all flagged (then how to flag them again, where a filter did it)."""
    if not matched:
        return (
            f"{out_dir}: no synthetic image matches a real class ({', '.join(classes.names)}); "
            "concept names must match the real class names"
        )
    counts = ", ".join(f"{flag} {n}" for flag, n in flagged.most_common())
    if flagged["filtered"]:
        remedy = (
            f"flag them again at a lower minimum (`augment filter {out_dir} "
            "--min-concept-score 0`), or render more"
        )
    else:
        remedy = f"`augment view {out_dir}` shows them with their flags; render others"
    return (
        f"{out_dir}: all {matched} images of the real classes are flagged ({counts}), and "
        f"benchmarks train on unflagged images only; {remedy}"
    )


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def rendered_from(run_dir: Path) -> Path | None:
    """The real images a run rendered from (the source of img2img, inpaint and controlnet; a
    paste folder's backgrounds) as `real_set_file` names them; None for txt2img, or where the
    run's spec cannot be read (said)."""
    from augment.job import saved_run_spec

    paste = (run_dir / "paste.json").is_file()  # OUT/paste: the job's spec is OUT's
    spec_dir = run_dir.parent if paste else run_dir
    if not (spec_dir / "job.yaml").is_file():
        return None
    try:
        spec = saved_run_spec(spec_dir)
    except AugmentError as exc:
        log.warning("cannot tell which real images %s was rendered from: %s", run_dir, exc)
        return None
    location = spec.paths.backgrounds if paste else spec.paths.source
    return None if location is None else real_set_file(location)


def real_set_file(location: str | Path) -> Path:
    """One name for a real set: a COCO folder is its annotations.json."""
    path = Path(location).resolve()
    return path / "annotations.json" if (path / "annotations.json").is_file() else path


def image_key(image_id: str) -> str:
    """An image's id as a source and a real set both spell it: an image folder's real ids keep
    the file's suffix ("one/0047.png"), its source ids do not ("one/0047")."""
    return Path(image_id).with_suffix("").as_posix()


def renders_of_held_out(run_dir: Path, location: str | Path, held_out: list[str]) -> set[str]:
    """The item_ids of a run's images rendered from a held-out image (`held_out`: ids) of the
    real set at `location`: an img2img render keeps most of its source's pixels, so training
    on it is training on the image it is scored on."""
    from augment.sinks.parquet import read_shard, run_shards

    source = rendered_from(run_dir)
    if source is None or source != real_set_file(location):
        return set()
    keys = {image_key(image_id) for image_id in held_out}
    found = set()
    for path in run_shards(run_dir):
        for row in read_shard(path, ["item_id", "source_image_id"]).to_pylist():
            if row["source_image_id"] is not None and image_key(row["source_image_id"]) in keys:
                found.add(row["item_id"])
    return found


def check_no_leak(test: ImageSet, *training: ImageSet) -> None:
    """Refuse training data that holds a test image (same pixels or same id)."""
    test_digests = {image_digest(image): i for i, image in zip(test.ids, test.images, strict=True)}
    test_ids = set(test.ids)
    for images in training:
        for image_id, image in zip(images.ids, images.images, strict=True):
            same = image_id if image_id in test_ids else test_digests.get(image_digest(image))
            if same is not None:  # a real set's two copies of one photo, split apart
                raise AugmentError(
                    f"a test image is also in the training data: test image {same} is "
                    f"{image_id} there (the same {'id' if same == image_id else 'pixels'}); "
                    "the held-out real test set must stay unseen: remove the copy from the "
                    "real set (or the synthetic folder)"
                )
