"""Source images: the real images img2img, inpaint and controlnet start from.

A source set is read from a COCO dataset (annotations.json + images), an image folder
(``<class>/<image>``) or a Parquet table of images (an `augment` output folder included). It is
indexed once, without decoding pixels; a worker decodes an image when it renders it. Labels are
matched to the job's concepts by name or id, so the boxes a source carries are transferred to
the synthetic image with the job's category ids.
"""

from __future__ import annotations

import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from augment.config import JobSpec, MaskSpec, SourceSpec
from augment.errors import SourceImageError, SpecError, first_line
from augment.records import SourceBox, SourceImage, SourceTarget
from augment.taxonomy.concept import Concept
from augment.taxonomy.listfile import slugify

log = logging.getLogger(__name__)

#: Threads reading image headers at once (they wait on the disk, not the CPU).
HEADER_THREADS = 8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

#: EXIF orientations that turn a photo a quarter: shown, its width and height swap.
QUARTER_TURNS = {5, 6, 7, 8}


def shown_size(image: Image.Image) -> tuple[int, int]:
    """The size a viewer shows (and a labelling tool boxes): a phone photo stored sideways with
    an EXIF orientation has its width and height swapped."""
    width, height = image.size
    turned = image.getexif().get(0x0112) in QUARTER_TURNS  # 0x0112: the Orientation tag
    return (height, width) if turned else (width, height)


def shown(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """A user's image as a viewer shows it, in 8 bits: turned upright by its EXIF orientation,
    16-bit grey scaled down (PIL's conversion clips it to 255, leaving black and white), and,
    in colour, a transparent image laid on white (dropping the alpha showed what lay under
    it: black ink on a transparent PNG became a black square)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # I;16, I;16B (16-bit PNG and TIFF) and I (32-bit)
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "RGB" and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert(mode)


def natural_key(text: str) -> list:
    """'2' before '10': COCO ids and numbered files in the order people expect."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def category_label(category_id: int) -> str:
    """The label of a box known only by its category id (a Parquet table without names)."""
    return f"category id {category_id}"


class ConceptIndex(dict):
    """Source labels (as slugs) -> concepts; `ambiguous`: the slugs of labels that read alike
    for two concepts (C++ and C#, WordNet's two "spotted salamander"), which match neither."""

    ambiguous: dict[str, list[str]]


def concept_index(concepts: list[Concept]) -> ConceptIndex:
    """Source labels -> concepts, by name, id or alias (compared as slugs), and a nameless
    box's `category_label`. A bare number is no key: MNIST's class folders 0..9 would have
    matched the digits' category ids 1..10, every image one class off. A label that two
    concepts share is no key either: it gave its images to the first of them, unsaid."""
    index = ConceptIndex()
    index.ambiguous = {}
    for concept in concepts:
        for key in (
            concept.name,
            concept.id,
            *concept.aliases,
            category_label(concept.category_id),
        ):
            slug = slugify(key)
            if slug in index.ambiguous:
                index.ambiguous[slug].append(concept.id)
            elif index.setdefault(slug, concept) is not concept:
                index.ambiguous[slug] = [index.pop(slug).id, concept.id]
    for slug, ids in index.ambiguous.items():
        index.ambiguous[slug] = list(dict.fromkeys(ids))
    return index


def detect_format(path: Path) -> str:
    if path.is_file():
        return {".json": "coco", ".parquet": "parquet"}.get(path.suffix, "unknown")
    if (path / "annotations.json").is_file():
        return "coco"
    if (path / "shards").is_dir() or any(path.glob("*.parquet")):
        return "parquet"
    if path.is_dir() and any(
        p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()
    ):
        return "imagefolder"
    return "unknown"


def unreadable_image(file: Path | str, exc: Exception) -> dict:
    """A failure entry for manifest.json: the source file and why it cannot be used."""
    reason = first_line(exc)
    return {"source": str(file), "error": reason}


#: What decoding a user's file may raise: PIL's own errors, and whatever an image plugin that
#: another library registered raises (ultralytics' HEIF opener raises ModuleNotFoundError).
DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    ValueError,
    ImportError,
    SyntaxError,  # PIL raises it for some malformed headers
)


def readable_sizes(files: list[Path], unreadable: list[dict]) -> list[tuple[int, int] | None]:
    """The size each file's image is shown at (`shown_size`), or None, with an entry in
    `unreadable` (in the files' order), when it cannot be decoded. Headers are read by a few
    threads, since the reads wait on the disk: 5,000 JPEGs from a cold cache took 1.7 s one
    after the other and 0.8-1.0 s so (0.54 and 0.68 s from a warm one), on 2 cores."""

    def size(file: Path) -> tuple[int, int] | Exception:
        try:
            with Image.open(file) as image:
                return shown_size(image)
        except DECODE_ERRORS as exc:
            return exc

    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        read = list(pool.map(size, files))
    for file, result in zip(files, read, strict=True):
        if isinstance(result, Exception):
            unreadable.append(unreadable_image(file, result))
    return [None if isinstance(result, Exception) else result for result in read]


def coco_mask_counts(segmentation, size: tuple[int, int]) -> str | None:
    """A COCO annotation's `segmentation` (polygons, or RLE of the image's size) as compressed
    RLE counts at `size` (width, height); None where it has none that fits (said by no one:
    the box alone is kept, as before masks were read)."""
    from pycocotools import mask as coco

    width, height = size
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                return None
            rle = coco.merge(coco.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and list(segmentation.get("size", [])) == [
            height,
            width,
        ]:
            counts = segmentation["counts"]
            rle = (
                coco.frPyObjects(segmentation, height, width)
                if isinstance(counts, list)
                else {"size": [height, width], "counts": str(counts).encode("ascii")}
            )
        else:
            return None
        return rle["counts"].decode("ascii")
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def source_box(
    label: str, bbox, where: str, size: tuple[int, int] | None, mask: str | None = None
) -> SourceBox:
    """A source's box, checked: four numbers [x, y, w, h], a positive width and height, and
    on the image (of `size`, where known). A short bbox was a fault deep in planning; one off
    the image or of no width was exported as a label of nothing."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise SpecError(
            f"source.path: {where} has bbox {bbox!r}; a box is [x, y, width, height] in pixels"
        ) from None
    if not (w > 0 and h > 0):
        raise SpecError(f"source.path: {where} has bbox {bbox!r}, of no width or height")
    if (
        size is not None
        and all(size)
        and (x >= size[0] or y >= size[1] or x + w <= 0 or y + h <= 0)
    ):
        raise SpecError(
            f"source.path: {where} has bbox {bbox!r}, outside its {size[0]}x{size[1]} image"
        )
    return SourceBox(label, (x, y, w, h), mask)


def coco_image_folders(annotations: Path) -> list[Path]:
    """Where a COCO annotations file's images can be, in the order looked: `images/` beside it,
    its own folder, and COCO's own layout, `annotations/instances_val2017.json` for
    `val2017/` beside `annotations/`."""
    folder = annotations.parent
    folders = [folder / "images", folder]
    split = annotations.stem.split("_", 1)
    if folder.name == "annotations" and len(split) == 2 and split[1]:
        folders.append(folder.parent / split[1])
    return folders


def find_coco_image(folders: list[Path], file_name: str) -> Path | None:
    """The first of `folders` holding `file_name` (the folder, not the file)."""
    return next((f for f in folders if (f / file_name).is_file()), None)


def no_coco_images(annotations: Path, file_name: str) -> str:
    """What to say when none of a COCO file's images is where they can be."""
    looked = ", ".join(f"{f}/" for f in coco_image_folders(annotations))
    return (
        f"none of the images {annotations} lists is found (its first, {file_name}, is not in "
        f"{looked}); put them in {annotations.parent / 'images'}/, beside the annotations file"
    )


def read_coco(path: Path, unreadable: list[dict]) -> list[SourceImage]:
    annotations = path if path.is_file() else path / "annotations.json"
    try:
        document = json.loads(annotations.read_text())
        names = {c["id"]: c["name"] for c in document["categories"]}
        sizes: dict = {}
        for entry in document["images"]:
            if entry["id"] in sizes:  # one image's boxes would go to the other
                raise SpecError(
                    f"source.path: {annotations} lists image id {entry['id']!r} twice; give "
                    "every image its own id"
                )
            sizes[entry["id"]] = (int(entry["width"]), int(entry["height"]))
            if min(sizes[entry["id"]]) < 1:
                raise SpecError(
                    f"source.path: {annotations} gives image {entry['id']!r} the size "
                    f"{entry['width']}x{entry['height']}; give its width and height in pixels"
                )
        boxes: dict[int, list[SourceBox]] = {}
        crowds = 0
        for a in document.get("annotations", []):
            where = f"{annotations}: annotation {a.get('id')!r}"
            if a["category_id"] not in names:
                raise SpecError(
                    f"source.path: {where} has category_id {a['category_id']!r}, which "
                    "categories does not list; add it there, or correct the annotation"
                )
            if a["image_id"] not in sizes:  # its image would be left out without a word
                raise SpecError(
                    f"source.path: {where} has image_id {a['image_id']!r}, which images does "
                    "not list; add the image, or correct the annotation"
                )
            if a.get("iscrowd"):  # a region of many objects, not one: no box label can say it
                crowds += 1
                continue
            size = sizes[a["image_id"]]
            mask = coco_mask_counts(a.get("segmentation"), size)
            box = source_box(names[a["category_id"]], a["bbox"], where, size, mask)
            boxes.setdefault(a["image_id"], []).append(box)
        if crowds:
            log.warning(
                "%s: %d crowd region(s) (iscrowd: 1) not carried as labels: each is many "
                "objects, not one, and the exports would make it an object (ultralytics' own "
                "COCO converter leaves them out too)",
                annotations,
                crowds,
            )
        folders = coco_image_folders(annotations)
        found = [find_coco_image(folders, entry["file_name"]) for entry in document["images"]]
        if document["images"] and not any(found):  # a layout not read, not missing images
            raise SpecError(
                f"source.path: {no_coco_images(annotations, document['images'][0]['file_name'])}"
            )
        files = [
            (folder or folders[0]) / entry["file_name"]
            for entry, folder in zip(document["images"], found, strict=True)
        ]
        for file, folder in zip(files, found, strict=True):
            if folder is None:
                unreadable.append(unreadable_image(file, FileNotFoundError("no such file")))
        present = [file for file, image_folder in zip(files, found, strict=True) if image_folder]
        shown = dict(zip(present, readable_sizes(present, unreadable), strict=True))
        images = []
        for entry, file in zip(document["images"], files, strict=True):
            shown_at = shown.get(file)
            if shown_at is None:
                continue
            (shown_width, shown_height), (width, height) = shown_at, sizes[entry["id"]]
            if abs(width * shown_height - height * shown_width) > max(width, height):
                raise SpecError(  # its boxes would be scaled onto the wrong places
                    f"source.path: {annotations} says image {entry['id']!r} is {width}x"
                    f"{height}, but {file} is {shown_width}x{shown_height} as shown (turned by "
                    "its EXIF orientation, if it has one); correct its width and height"
                )
            images.append(
                SourceImage(
                    id=str(entry["id"]),
                    location=str(file),
                    width=int(entry["width"]),
                    height=int(entry["height"]),
                    boxes=tuple(boxes.get(entry["id"], [])),
                )
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(
            f"source.path: {annotations} is not a readable COCO annotations file ({exc!r})"
        ) from None
    return images


def visible(folder: Path) -> list[Path]:
    """A folder's entries in order, less hidden ones (`.DS_Store`, macOS's `._photo.jpg`
    resource forks, `.thumbs/`): never a user's images, and no decoder reads them."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def warn_nested(class_dirs: list[Path]) -> None:
    """Say which folders inside class folders are not read: their images were left out
    without a word (a class's images go right in its folder)."""
    nested = [d for folder in class_dirs for d in visible(folder) if d.is_dir()]
    if nested:
        log.warning(
            "%d folder(s) inside class folders are not read, first %s: put a class's images "
            "right in its folder",
            len(nested),
            nested[0],
        )


def read_imagefolder(path: Path, unreadable: list[dict]) -> list[SourceImage]:
    """<class>/<image> files labelled by their folder, and images right in `path` unlabelled
    (a flat folder of backgrounds)."""
    seen: dict[str, Path] = {}
    groups = [(None, path), *((d.name, d) for d in visible(path) if d.is_dir())]
    labelled: list[tuple[str | None, str, Path]] = []
    for label, class_dir in groups:
        for file in visible(class_dir):
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            image_id = file.stem if label is None else f"{label}/{file.stem}"
            if image_id in seen:  # one would be rendered twice, the other never
                raise SpecError(
                    f"source.path: {seen[image_id]} and {file} would both be image "
                    f"{image_id}; rename one of them"
                )
            seen[image_id] = file
            labelled.append((label, image_id, file))
    sizes = readable_sizes([file for _, _, file in labelled], unreadable)
    warn_nested([folder for _, folder in groups[1:]])
    return [
        SourceImage(id=image_id, location=str(file), width=size[0], height=size[1], label=label)
        for (label, image_id, file), size in zip(labelled, sizes, strict=True)
        if size is not None
    ]


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / "shards" if (path / "shards").is_dir() else path
    return sorted(folder.glob("*.parquet"))


def read_parquet(path: Path, unreadable: list[dict]) -> list[SourceImage]:
    """Rows with an `image` column; ids from item_id/image_id/id, labels from concept_name/label.

    Box category ids are named through the folder's manifest.json when it is an augment run.
    """
    names: dict[int, str] = {}
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    if manifest.is_file():
        from augment.sinks.rows import run_categories

        names = {c["id"]: c["name"] for c in run_categories(manifest.parent)}
    images = []
    for file in parquet_files(path):
        schema = pq.read_schema(file)
        if "image" not in schema.names:
            raise SpecError(f"source.path: {file} has no 'image' column")
        id_column = next((c for c in ("item_id", "image_id", "id") if c in schema.names), None)
        label_column = next((c for c in ("concept_name", "label") if c in schema.names), None)
        columns = [c for c in (id_column, label_column, "width", "height", "boxes") if c]
        rows = pq.read_table(file, columns=[c for c in columns if c in schema.names]).to_pylist()
        if "width" not in schema.names or "height" not in schema.names:
            for row_index, (row, cell) in enumerate(zip(rows, image_cells(file), strict=True)):
                try:
                    with Image.open(io.BytesIO(cell)) as image:
                        row["width"], row["height"] = shown_size(image)
                except DECODE_ERRORS as exc:
                    unreadable.append(unreadable_image(f"{file}#{row_index}", exc))
                    row["unreadable"] = True
        for row_index, row in enumerate(rows):
            if row.get("unreadable"):
                continue
            size = (int(row.get("width") or 0), int(row.get("height") or 0))
            boxes = tuple(
                source_box(
                    box.get("label")
                    or names.get(box["category_id"], category_label(box["category_id"])),
                    box["bbox"],
                    f"{file} row {row_index}",
                    size,
                    box.get("rle") or None,  # an augment run's mask, at the row's size
                )
                for box in row.get("boxes") or []
            )
            images.append(
                SourceImage(
                    id=str(row[id_column]) if id_column else f"{file.stem}-{row_index}",
                    location=f"{file}#{row_index}",
                    width=int(row.get("width") or 0),
                    height=int(row.get("height") or 0),
                    label=str(row[label_column]) if label_column else None,
                    boxes=boxes,
                )
            )
    return images


def image_cells(file: str | Path) -> list[bytes]:
    """The encoded images of a Parquet file: an Image struct {bytes, path} or plain binary;
    a path (a string, or the struct's path where its bytes are empty, as Hugging Face writes
    them) is read, relative to the file's folder (b"" where it cannot be: unreadable)."""
    column = pq.read_table(file, columns=["image"]).column("image").to_pylist()
    cells = []
    for cell in column:
        data, path = (
            (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
        )
        if isinstance(data, str):
            data, path = None, data
        if data is None and path:
            try:
                data = (Path(file).parent / path).read_bytes()  # an absolute path stays one
            except OSError:
                data = None
        cells.append(data or b"")
    return cells


READERS = {"coco": read_coco, "imagefolder": read_imagefolder, "parquet": read_parquet}


class SourceSet:
    """The source images of a job, indexed by id; pixels are decoded on demand."""

    def __init__(self, path: str | Path, format: str = "auto", limit: int | None = None):
        self.path = Path(path)
        fmt = detect_format(self.path) if format == "auto" else format
        if fmt not in READERS:
            raise SpecError(
                f"source.path: cannot tell what {self.path} holds; set source.format to coco, "
                "imagefolder or parquet"
            )
        self.format = fmt
        #: Source images that cannot be used (missing, not decodable): listed in the manifest.
        self.unreadable: list[dict] = []
        images = sorted(READERS[fmt](self.path, self.unreadable), key=lambda i: natural_key(i.id))
        if not images:
            raise SpecError(f"source.path: {self.path} holds no readable images")
        self.images = images[:limit] if limit else images
        self.by_id = {image.id: image for image in self.images}
        self._parquet_images: dict[str, list] = {}  # file -> image column, read once

    @classmethod
    def at(cls, key: str, resolved: str | None, declared: SourceSpec) -> SourceSet:
        """The images a spec's source section (`key`, e.g. "paste.backgrounds") names, at the
        path resolved when the spec was loaded; errors name `key`."""
        path = Path(resolved or declared.path)
        if not path.exists():
            raise SpecError(
                f"{key}.path: '{declared.path}' not found (no {path}); give a COCO folder, an "
                "image folder (<class>/<image>, or flat), a Parquet file or an augment output"
            )
        try:
            return cls(path, declared.format, declared.limit)
        except SpecError as exc:  # its messages name source.path and source.format
            raise SpecError(str(exc).replace("source.", f"{key}.")) from None

    @classmethod
    def of(cls, spec: JobSpec) -> SourceSet:
        """The source images a spec names (at the path resolved when it was loaded)."""
        path = Path(spec.paths.source)
        if not path.exists():
            raise SpecError(
                f"source.path: '{spec.source.path}' not found (no {path}); give a COCO folder, "
                "an image folder, a Parquet file or builtin:digits-canvases"
            )
        return cls(path, spec.source.format, spec.source.limit)

    def pixels(self, image_id: str) -> Image.Image:
        """The source image as RGB; a missing or corrupt file is an error naming it."""
        location = self.by_id[image_id].location
        try:
            if "#" in location and location.split("#")[0].endswith(".parquet"):
                file, row = location.rsplit("#", 1)
                if file not in self._parquet_images:
                    self._parquet_images[file] = image_cells(file)
                data = self._parquet_images[file][int(row)]
                return shown(Image.open(io.BytesIO(data)))
            with Image.open(location) as image:
                return shown(image)
        except DECODE_ERRORS as exc:
            raise SourceImageError(
                f"source image {image_id} ({location}) cannot be read: {exc}", location
            ) from None

    def targets(
        self, concepts: list[Concept], mode: str, mask: MaskSpec, mask_files: str | None = None
    ) -> list[SourceTarget]:
        """What to render: one target per image, or per box / class when inpainting boxes.

        Boxes whose label is not a concept of the job are not transferred (and are logged):
        the synthetic image has no category id for them.
        """
        index = concept_index(concepts)
        targets: list[SourceTarget] = []
        unmatched: set[str] = set()
        unlabelled = 0  # images without a box or a label (a COCO image without annotations)
        per_box = mode == "inpaint" and mask.source == "boxes"
        for image in self.images:
            known = []
            for box in image.boxes:
                concept = index.get(slugify(box.label))
                if concept is None:
                    unmatched.add(box.label)
                else:
                    known.append((concept, box.bbox))
            boxes = tuple((concept.category_id, bbox) for concept, bbox in known)
            if per_box:
                seen: set[str] = set()
                for number, (concept, _) in enumerate(known):
                    if mask.per == "object":
                        targets.append(SourceTarget(image, concept, f"box:{number}", boxes))
                    elif concept.id not in seen:
                        seen.add(concept.id)
                        targets.append(SourceTarget(image, concept, f"class:{concept.id}", boxes))
                continue
            label = image.main_label()
            if label is None:
                unlabelled += 1
                continue
            concept = index.get(slugify(label))
            if concept is None:
                unmatched.add(label)
                continue
            targets.append(SourceTarget(image, concept, None, boxes))
        alike = sorted(label for label in unmatched if slugify(label) in index.ambiguous)
        if alike:
            first = alike[0]
            log.warning(
                "source labels that name several concepts of the job alike, not used: %s (%s "
                "names %s); name each folder or label by its concept's id",
                ", ".join(alike[:10]),
                first,
                " and ".join(index.ambiguous[slugify(first)]),
            )
            unmatched -= set(alike)
        if unmatched:
            log.warning(
                "source labels that are not concepts of the job, not used: %s",
                ", ".join(sorted(unmatched)[:10]),
            )
        rendered = {target.concept.id for target in targets}
        missing = [c.name for c in concepts if c.id not in rendered]
        if targets and missing:  # they get no image, and a run said nothing of it
            shown = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            log.warning(
                "%d concept(s) of the job match no source image and get no image: %s (name a "
                "folder or label after each)",
                len(missing),
                shown,
            )
        if mode == "inpaint" and mask.source == "files":
            for target in targets:  # checked before anything renders
                path = self.mask_path(mask_files, target.image.id)
                if path is None:
                    raise self.no_mask(mask_files, target.image.id)
                check_mask_size(path, target.image)
        if not targets:
            need = (
                "inpainting from boxes needs images with boxes of the job's concepts"
                if per_box
                else "source labels must equal concept names or ids"
            )
            if any(label.isdigit() for label in unmatched):
                need += " (a number is not matched: name the folders after the concepts)"
            seen = f"labels seen: {', '.join(sorted(unmatched)[:5]) or 'none'}"
            if unlabelled:
                seen += f"; {unlabelled} of {len(self.images)} images have no label"
            raise SpecError(
                f"source.path: no image of {self.path} matches a concept of the taxonomy "
                f"({seen}); {need}"
            )
        return targets

    def mask_stem(self, image_id: str) -> str:
        location = self.by_id[image_id].location
        if "#" in location:  # a Parquet row: masks are named by the image id
            return image_id.replace("/", "_")
        return Path(location).stem

    def mask_path(self, folder: str, image_id: str) -> Path | None:
        """The mask file of a source image: same file stem, any image suffix."""
        stem = self.mask_stem(image_id)
        for suffix in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
            if (Path(folder) / f"{stem}{suffix}").is_file():
                return Path(folder) / f"{stem}{suffix}"
        return None

    def mask(self, folder: str, image_id: str) -> Image.Image:
        """The mask of a source image as 'L': white repaints, black keeps."""
        path = self.mask_path(folder, image_id)
        if path is None:
            raise self.no_mask(folder, image_id)
        with Image.open(path) as mask:
            return shown(mask, "L")

    def no_mask(self, folder: str, image_id: str) -> SpecError:
        return SpecError(
            f"generation.mask.files: no mask for source image {image_id} in {folder} "
            f"(expected {self.mask_stem(image_id)}.png, white where to repaint)"
        )


def check_mask_size(path: Path, image: SourceImage) -> None:
    """A mask file must be its source image's size: another size is another image's mask."""
    try:
        with Image.open(path) as mask:
            width, height = shown_size(mask)
    except DECODE_ERRORS as exc:
        raise SpecError(f"generation.mask.files: mask {path} cannot be read: {exc}") from None
    if (width, height) != (image.width, image.height):
        raise SpecError(
            f"generation.mask.files: mask {path} is {width}x{height} but its source image "
            f"{image.id} is {image.width}x{image.height}; a mask must be its image's size"
        )
