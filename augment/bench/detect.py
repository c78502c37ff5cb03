"""Detector benchmark: YOLO trained on real-only vs real + synthetic, scored with COCOeval.

The real set is a COCO dataset (annotations.json + images/): given as a folder with train/ and
val/ (and test/) inside, or one folder that is split by image, seeded. The synthetic set is an
`augment` output whose records carry boxes. For each arm and seed, ultralytics trains
`yolov8n.yaml` from scratch (or a local .pt) offline; ultralytics' own validation writes its
predictions as COCO results, and pycocotools' COCOeval scores those same predictions against
the scored split's real annotations (mAP50, mAP50:95, per-class AP): test/ where there is one,
so that settings tuned on val/ are scored once on images they never saw. Both mAP figures are
kept, so they can be compared.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from augment.bench.classify import check_results_table, write_results
from augment.bench.data import image_digest, read_coco, renders_of_held_out
from augment.bench.workers import default_workers, in_processes
from augment.errors import AugmentError, at_least, between
from augment.sinks import check_own_folder
from augment.sources import coco_image_folders, find_coco_image, no_coco_images
from augment.taxonomy.listfile import slugify

log = logging.getLogger(__name__)


@dataclass
class DetectSettings:
    real: str  # COCO folder: train/ + val/ (+ test/), or one annotations.json to split
    synthetic: str | None = None  # an `augment` output with boxes
    out: str = "bench"
    task: str = "detect"  # or "segment": a -seg model, box and mask mAP from the same models
    model: str | None = None  # default: yolov8n.yaml, or yolov8n-seg.yaml for task segment
    imgsz: int = 96
    epochs: int = 10  # of the augmented arm; real-only gets as many steps
    batch: int = 16
    seeds: int = 3
    val_fraction: float = 0.3
    split_seed: int = 0
    # the real split the detectors are scored on: auto is test/ where the folder has one, else
    # val/ (or the held-out part of one annotations.json); settings tuned on the scored split
    # make its figure an upper estimate, so tune on validation and score test once
    evaluate_on: str = "auto"
    # ultralytics training settings, named as ultralytics names them, at its defaults. Digits
    # want fliplr 0 (a mirrored 2 is no digit) and mosaic 0; a small set wants nbs = batch:
    # ultralytics accumulates gradients up to nbs images, so 300 images at nbs 64 make only five
    # optimiser steps an epoch.
    fliplr: float = 0.5
    mosaic: float = 1.0
    optimizer: str = "auto"  # auto: AdamW at a size-fitted lr for short runs, else SGD
    lr0: float = 0.01  # ignored by optimizer auto
    nbs: int = 64
    warmup_epochs: float = 3.0
    workers: int | None = None  # models trained at once (default: cores / ultralytics' threads)

    def __post_init__(self) -> None:
        """Refuse settings no benchmark can run, before any data is read."""
        for name in ("epochs", "seeds", "batch", "nbs"):
            at_least(name, getattr(self, name), 1)
        at_least("split_seed", self.split_seed, 0)  # numpy's generators take no negative seed
        if self.workers is not None:
            at_least("workers", self.workers, 1)
        at_least("imgsz", self.imgsz, 32, " (YOLO's largest stride)")
        between("val_fraction", self.val_fraction, 0, 1)
        for name in ("fliplr", "mosaic"):  # probabilities
            if not 0 <= getattr(self, name) <= 1:
                raise AugmentError(f"{name} must be from 0 to 1, got {getattr(self, name)}")
        if self.lr0 <= 0 or self.warmup_epochs < 0:
            raise AugmentError(
                f"lr0 must be > 0 and warmup_epochs >= 0, got {self.lr0} and {self.warmup_epochs}"
            )
        if self.evaluate_on not in EVALUATE_ON:
            raise AugmentError(f"evaluate_on: {', '.join(EVALUATE_ON)}, got {self.evaluate_on!r}")
        if self.task not in ("detect", "segment"):
            raise AugmentError(f"task must be detect or segment, got '{self.task}'")
        optimizers = ("auto", "SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp")
        if self.optimizer not in optimizers:
            raise AugmentError(
                f"optimizer '{self.optimizer}' is not one of {', '.join(optimizers)}"
            )


EVALUATE_ON = ("auto", "test", "validation")

# The DetectSettings fields passed to ultralytics' train() under their own names.
TRAINING_SETTINGS = ("fliplr", "mosaic", "optimizer", "lr0", "nbs", "warmup_epochs")
#: ultralytics' close_mosaic: mosaic off for the augmented arm's last 10 epochs (its default).
CLOSE_MOSAIC_EPOCHS = 10


def model_name(settings: DetectSettings) -> str:
    return settings.model or ("yolov8n-seg.yaml" if settings.task == "segment" else "yolov8n.yaml")


def check_yolo_model(name: str) -> None:
    """A model ultralytics can build or load here, offline: checked before the last run's
    models are cleared, not in a worker once they are gone."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml", ".pt"):
        raise AugmentError(
            f"model {name}: give a YOLO config (.yaml, such as yolov8n.yaml) or weights (.pt)"
        )
    if path.suffix == ".pt":
        if not path.is_file():
            raise AugmentError(
                f"model {name}: weights file not found (nothing is downloaded here); give a .pt "
                "path, or a config such as yolov8n.yaml to train from scratch"
            )
        return
    from ultralytics.nn.tasks import yaml_model_load  # yolov8n.yaml is yolov8.yaml, scale n

    try:
        yaml_model_load(name)
    except FileNotFoundError:
        raise AugmentError(
            f"model {name}: no such YOLO config, as a file or among ultralytics' own "
            "(yolov8n.yaml, yolov8n-seg.yaml, yolo11n.yaml, ...)"
        ) from None


def prepare_ultralytics(cache: Path) -> None:
    """ultralytics offline: no downloads, no auto-install, a writable settings folder."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache / "ultralytics"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    warnings.filterwarnings("ignore", message=".*get_trial_id.*")  # ultralytics' Ray hook


def scored_split(settings: DetectSettings) -> tuple[str, Path | None]:
    """The real split the detectors are scored on, as `evaluated_on` names it ("test" or
    "validation"), and its annotations.json in a folder of splits (None: one annotations.json,
    scored on the part held out of it here)."""
    root = Path(settings.real)
    has = {name: (root / name / "annotations.json").is_file() for name in ("train", "val", "test")}
    if has["train"] and (has["val"] or has["test"]):
        if settings.evaluate_on == "validation" and not has["val"]:
            raise AugmentError(
                f"evaluate_on validation: real detection data '{settings.real}' has no "
                "val/annotations.json; give a val/ split, or evaluate_on test"
            )
        if settings.evaluate_on == "test" and not has["test"]:
            raise AugmentError(
                f"evaluate_on test: real detection data '{settings.real}' has no "
                "test/annotations.json; give a test/ split, or evaluate_on validation (a "
                "figure on the split its settings were tuned on is an upper estimate)"
            )
        if has["test"] and settings.evaluate_on != "validation":
            return "test", root / "test" / "annotations.json"
        return "validation", root / "val" / "annotations.json"
    if settings.evaluate_on == "test":
        raise AugmentError(
            f"evaluate_on test: real detection data '{settings.real}' has no train/ and test/ "
            "folders (annotations.json + images/ each), and the part held out of one "
            "annotations.json is a validation split; give the folders, or evaluate_on validation"
        )
    present = [name for name in ("train", "val", "test") if (root / name).is_dir()]
    if present and not (root / "annotations.json").is_file():  # a folder of splits, short of one
        lacking = " and ".join(
            what
            for what, missing in (
                ("train/", not has["train"]),
                ("val/ or test/", not (has["val"] or has["test"])),
            )
            if missing
        )
        raise AugmentError(
            f"real detection data '{settings.real}' holds {', '.join(f'{n}/' for n in present)} "
            f"and no {lacking} with its annotations.json; give train/ and val/ (and test/), "
            "annotations.json + images/ each"
        )
    return "validation", None


def split_folder(split: str) -> str:
    """The folder name of an `evaluated_on` split ("val" for validation), as messages say it."""
    return "val" if split == "validation" else split


def real_splits(settings: DetectSettings) -> tuple[dict, Path, dict, Path]:
    """(train coco, train images dir, scored coco, scored images dir): the scored split is the
    one `scored_split` names."""
    root = Path(settings.real)
    _, held = scored_split(settings)
    if held is not None:
        splits = []
        for path in (root / "train" / "annotations.json", held):
            document = read_coco(path, boxes=True)
            splits += [document, coco_images_dir(path, document)]
        return tuple(splits)
    path = root / "annotations.json" if root.is_dir() else root
    if not path.is_file():
        raise AugmentError(
            f"real detection data '{settings.real}' not found: give a COCO folder with "
            "train/ and val/ (and test/; annotations.json + images/ each) or one annotations.json"
        )
    document = read_coco(path, boxes=True)
    rng = np.random.default_rng(settings.split_seed)
    ids = rng.permutation([image["id"] for image in document["images"]])
    val_ids = set(ids[: max(1, round(len(ids) * settings.val_fraction))].tolist())

    def subset(keep) -> dict:
        images = [i for i in document["images"] if keep(i["id"])]
        kept = {i["id"] for i in images}
        annotations = [a for a in document["annotations"] if a["image_id"] in kept]
        return {**document, "images": images, "annotations": annotations}

    images_dir = coco_images_dir(path, document)
    return (
        subset(lambda i: i not in val_ids),
        images_dir,
        subset(lambda i: i in val_ids),
        images_dir,
    )


def coco_images_dir(path: Path, document: dict) -> Path:
    """The folder holding a COCO file's images (`images/` beside it, or COCO's own layout), or
    one line saying where they were looked for."""
    first = document["images"][0]["file_name"]
    folder = find_coco_image(coco_image_folders(path), first)
    if folder is None:
        raise AugmentError(f"real detection data: {no_coco_images(path, first)}")
    return folder


def real_categories(train: dict, val: dict, real: str, split: str = "val") -> list[dict]:
    """The categories of both real splits, by id (train may list one val does not), once each
    split can be trained on and scored: images to train on, and objects in val (the scored
    split, named `split` in messages)."""
    if not train["images"]:
        raise AugmentError(
            f"real detection data '{real}': its train split has no image (all "
            f"{len(val['images'])} went to {split}); give more images, or train/ and val/ folders"
        )
    if not any(not a.get("iscrowd") for a in val["annotations"]):
        raise AugmentError(
            f"real detection data '{real}': its {split} split has no annotated object (in "
            f"{len(val['images'])} images), so there is nothing to score; give it annotated "
            "images (from one annotations.json split here: more annotated images)"
        )
    trained, scored = category_ids_by_name(train), category_ids_by_name(val)
    for name in sorted(trained.keys() & scored.keys()):
        if trained[name] != scored[name]:  # two classes of one name to ultralytics
            raise AugmentError(
                f"real detection data '{real}': category {name!r} is id "
                f"{', '.join(map(str, sorted(trained[name])))} in train and "
                f"{', '.join(map(str, sorted(scored[name])))} in {split}; give both "
                "splits the same category ids"
            )
    by_id: dict = {}
    for category in [*train["categories"], *val["categories"]]:
        other = by_id.setdefault(category["id"], category)
        if other["name"] != category["name"]:
            raise AugmentError(
                f"real detection data '{real}': category id {category['id']} is "
                f"{other['name']!r} in train and {category['name']!r} in {split}; give both "
                "splits the same categories"
            )
    return sorted(by_id.values(), key=lambda c: c["id"])


def category_ids_by_name(document: dict) -> dict[str, set]:
    """A COCO document's category name -> the ids it goes by."""
    ids: dict[str, set] = {}
    for category in document["categories"]:
        ids.setdefault(category["name"], set()).add(category["id"])
    return ids


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray | None:
    """A COCO annotation's mask (RLE or polygons), or None when it has none."""
    from pycocotools import mask as coco_mask

    from augment.labels.segment import decode_rle

    segmentation = annotation.get("segmentation")
    if not segmentation:
        return None
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
        return decode_rle(segmentation["counts"], height, width)  # compressed RLE, as we write
    if isinstance(segmentation, list):  # polygons
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    else:  # uncompressed RLE
        rle = coco_mask.frPyObjects(segmentation, height, width)
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= notice, on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle).astype(bool)


def write_yolo_split(
    coco: dict,
    images_dir: Path,
    target: Path,
    class_index: dict[int, int],
    prefix: str = "",
    segments: bool = False,
) -> int:
    """Images (named by their position, from 1) + YOLO label files (crowd regions left out),
    boxes or (`segments`) polygons from the masks (a mask-less box as its rectangle); returns
    the number of images."""
    from augment.sinks.yolo import yolo_box_line, yolo_instance_line

    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "labels").mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for position, image in enumerate(coco["images"], start=1):
        stem = f"{prefix}{position}"  # an id such as "000001" came back from ultralytics as 1
        source = images_dir / image["file_name"]
        shutil.copyfile(source, target / "images" / f"{stem}{source.suffix}")
        lines = []
        width, height = image["width"], image["height"]
        for ann in by_image.get(image["id"], []):
            if ann.get("iscrowd"):  # a crowd region, not an object: COCOeval ignores it too
                continue
            cls = class_index[ann["category_id"]]
            if segments:
                mask = annotation_mask(ann, height, width)
                lines.append(yolo_instance_line(cls, ann["bbox"], mask, width, height))
            else:
                lines.append(yolo_box_line(cls, ann["bbox"], width, height))
        (target / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n" * bool(lines))
    return len(coco["images"])


def synthetic_category_ids(run_dir: Path, categories: list[dict]) -> dict[int, int]:
    """The run's category ids of its boxes -> the real set's, by name. By number, a real set
    numbered from 0, or in another order, trained every pasted digit as another one (or ended
    in a KeyError); a class the real set lacks is refused, since its objects would be
    trained as background."""
    from augment.sinks import run_categories, run_shards
    from augment.sinks.parquet import read_records

    real = {slugify(c["name"]): c["id"] for c in categories}
    own = {c["id"]: c["name"] for c in run_categories(run_dir)}
    shards = run_shards(run_dir)
    used = {
        box["category_id"]
        for record in read_records(run_dir / "shards", ["boxes"], shards)
        for box in record["boxes"] or []
    }
    missing = sorted(own.get(i, str(i)) for i in used if slugify(own.get(i, str(i))) not in real)
    if missing:
        raise AugmentError(
            f"{run_dir}: its boxes of {', '.join(missing[:5])} name no category of the real set "
            f"({', '.join(c['name'] for c in categories[:12])}); the detector learns the real "
            "set's classes: render only those concepts, or add the class to the real set"
        )
    return {i: real[slugify(own[i])] for i in used}


def synthetic_coco(
    run_dir: Path,
    target: Path,
    category_ids: dict[int, int],
    val: dict[str, str] | None = None,
    leave_out: set[str] = frozenset(),
    split: str = "val",
) -> tuple[dict, Path]:
    """The run's boxed records as a COCO document + images folder (ids from 1), in the real
    set's category ids (`synthetic_category_ids`); the items in `leave_out` (renders of the
    scored split's images) left out, and an image with the pixels of one of them (`val`: their
    digests, as `val_digests` gives them; `split`: the split's name in messages) refused."""
    from augment.sinks import export_records

    images_dir = target / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    records = (r for r in export_records(run_dir) if r["item_id"] not in leave_out)
    for image_id, record in enumerate(records, start=1):
        same = val.get(image_digest(rgb(io.BytesIO(record["image"]["bytes"])))) if val else None
        if same is not None:
            raise AugmentError(
                f"a {split} image is also in the synthetic data: {split} image {same} is item "
                f"{record['item_id']} of {run_dir} (the same pixels); the real {split} set "
                "must stay unseen: render from the training images only"
            )
        name = f"{image_id}.png"
        (images_dir / name).write_bytes(record["image"]["bytes"])
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": record["width"],
                "height": record["height"],
            }
        )
        for box in record["boxes"] or []:
            size = [record["height"], record["width"]]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[box["category_id"]],
                    "bbox": list(box["bbox"]),
                    "segmentation": {"size": size, "counts": box["rle"]} if box["rle"] else [],
                }
            )
    if not annotations and leave_out:
        raise AugmentError(
            f"{run_dir}: no boxed image is left to train on once the {len(leave_out)} rendered "
            f"from the real {split} images are left out; render from the training images"
        )
    if not annotations:
        raise AugmentError(
            f"{run_dir}: no record carries boxes; detection needs boxed synthetic images "
            "(a job's OUT/paste from segment: and paste:, labels: auto-labels, or img2img/inpaint "
            "of a COCO set)"
        )
    return {"images": images, "annotations": annotations}, images_dir


def rgb(image_file) -> np.ndarray:
    """An image (a path, or a file of its bytes) as RGB pixels."""
    from PIL import Image

    with Image.open(image_file) as opened:
        return np.asarray(opened.convert("RGB"))


def val_digests(val_coco: dict, images_dir: Path) -> dict[str, str]:
    """Pixel digest -> val image id, to find a copy of a val image among the synthetic ones."""
    return {
        image_digest(rgb(images_dir / image["file_name"])): str(image["id"])
        for image in val_coco["images"]
    }


def check_real_copies(
    train: dict, images_dir: Path, held_out: dict[str, str], split: str = "val"
) -> None:
    """Refuse a real train image with the pixels of a scored one (`held_out`: `val_digests`):
    one photo listed twice, or copied into train/, was trained on and scored on."""
    for image in train["images"]:
        same = held_out.get(image_digest(rgb(images_dir / image["file_name"])))
        if same is not None:
            raise AugmentError(
                f"a {split} image is also in the real train split: {split} image {same} is "
                f"train image {image['id']!r} (the same pixels); the scored images must stay "
                "unseen: remove the copy from the real set"
            )


def val_location(settings: DetectSettings) -> Path:
    """The real file the scored images are read from (`real_splits`)."""
    _, held = scored_split(settings)
    if held is not None:
        return held
    root = Path(settings.real)
    return root / "annotations.json" if root.is_dir() else root


def coco_eval(ground_truth: dict, predictions: list[dict], iou_type: str = "bbox") -> dict:
    """mAP50, mAP50:95 and per-class AP (in %) of `predictions` on `ground_truth`, of their
    boxes (`bbox`) or masks (`segm`)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    present = {a["category_id"] for a in ground_truth["annotations"] if not a.get("iscrowd")}
    if not predictions:  # loadRes raises on an empty list: no detection scores zero
        scored = [name for category_id, name in names.items() if category_id in present]
        return {"map50": 0.0, "map50_95": 0.0, "per_class": dict.fromkeys(scored, 0.0)}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"info": {}, **ground_truth}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(predictions), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [iou, recall, class, area, max_dets]
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        if values.size:  # a class val has no object of has no AP (it read 0)
            per_class[names[category_id]] = 100.0 * float(values.mean())
    return {
        "map50": 100.0 * evaluator.stats[1],
        "map50_95": 100.0 * evaluator.stats[0],
        "per_class": per_class,
    }


@contextlib.contextmanager
def settings_refused_by_ultralytics():
    """ultralytics' own refusal of a setting (a last batch of one image at a small --imgsz)
    said "a fault of augment"; its message says what to change."""
    try:
        yield
    except ValueError as exc:
        if "final batch=1" not in str(exc):
            raise
        raise AugmentError(f"ultralytics: {exc} (here: --batch, --imgsz)") from None


def train_and_evaluate(
    data_yaml: Path, run_dir: Path, settings: DetectSettings, seed: int, epochs: int
) -> tuple[dict, list[dict], float]:
    """Train one YOLO; validate with ultralytics (save_json); return (metrics, predictions,
    seconds). Runs in a worker process: everything it needs comes in its arguments."""
    from augment.cache import cache_dir

    started = time.perf_counter()
    prepare_ultralytics(cache_dir())
    from ultralytics import YOLO

    model = YOLO(model_name(settings))
    common = dict(
        imgsz=settings.imgsz,
        batch=settings.batch,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        exist_ok=True,
        project=str(run_dir),
    )
    chosen = {name: getattr(settings, name) for name in TRAINING_SETTINGS}
    # ultralytics counts warm-up and mosaic's last epochs in epochs: an arm given more epochs of
    # fewer images (real-only) counts them in as many more, so both arms warm up over as many
    # steps and train their last steps without mosaic alike (real-only had half the warm-up, and
    # mosaic for half its training where the augmented arm had none)
    stretch = epochs / settings.epochs
    chosen["warmup_epochs"] = settings.warmup_epochs * stretch
    with contextlib.redirect_stdout(io.StringIO()), settings_refused_by_ultralytics():
        model.train(
            data=str(data_yaml),
            epochs=epochs,
            seed=seed,
            deterministic=True,
            amp=False,
            val=False,
            name="train",
            close_mosaic=round(CLOSE_MOSAIC_EPOCHS * stretch),
            **chosen,
            **common,
        )
        metrics = model.val(
            data=str(data_yaml), save_json=True, conf=0.001, iou=0.7, name="val", **common
        )
    predictions_file = Path(metrics.save_dir) / "predictions.json"
    predictions = json.loads(predictions_file.read_text()) if predictions_file.is_file() else []
    ultra = {"map50": 100.0 * metrics.box.map50, "map50_95": 100.0 * metrics.box.map}
    if settings.task == "segment":
        ultra["mask_map50_95"] = 100.0 * metrics.seg.map
    return ultra, predictions, time.perf_counter() - started


def detector_workers() -> int:
    """As many models at once as ultralytics' CPU threads per model fit in the cores."""
    from ultralytics.utils import NUM_THREADS

    return default_workers(NUM_THREADS)


#: What a detection benchmark writes in OUT/detect (and deletes when it runs again).
WORK_NAMES = ("val", "real_only", "augmented", "synthetic", "runs")


def check_work_folder(work: Path) -> None:
    """OUT/detect holds only what an earlier benchmark wrote there: it is deleted before this
    one trains, and a user's own folder of that name is refused instead."""
    check_own_folder(work, WORK_NAMES, "datasets and models", writer="a detection benchmark")


def run_detect(settings: DetectSettings) -> pd.DataFrame:
    """Every (arm, seed): train, validate, COCOeval; write OUT/results.parquet rows."""
    from augment.cache import cache_dir
    from augment.progress import image_progress
    from augment.sinks.parquet import run_shards

    if settings.synthetic:  # a wrong folder is named before anything is written
        run_shards(Path(settings.synthetic))
    prepare_ultralytics(cache_dir())
    check_yolo_model(model_name(settings))
    # absolute: ultralytics puts a relative project under ./runs/detect/, so a relative --out
    # left each model's weights in the current folder, 24 MB a run
    out = Path(settings.out).resolve()
    work = out / "detect"
    train_coco, train_images, val_coco, val_images = real_splits(settings)
    evaluated_on, _ = scored_split(settings)
    split = split_folder(evaluated_on)
    categories = real_categories(train_coco, val_coco, settings.real, split)
    class_index = {c["id"]: i for i, c in enumerate(categories)}
    category_ids = (
        synthetic_category_ids(Path(settings.synthetic), categories) if settings.synthetic else {}
    )
    segments = settings.task == "segment"
    objects = [a for a in val_coco["annotations"] if not a.get("iscrowd")]
    maskless = [a for a in objects if not a.get("segmentation")]
    if segments and maskless:  # COCOeval's segm scoring fails on them after every model trained
        held = "hold none" if len(maskless) == len(objects) else f"lack one in {len(maskless)}"
        raise AugmentError(
            f"task segment scores masks, and the real {split} annotations of '{settings.real}' "
            f"{held} of {len(objects)} objects (no `segmentation`, e.g. annotation "
            f"{maskless[0].get('id')!r}); give every object its mask, or use task detect"
        )
    check_results_table(out)
    check_work_folder(work)
    shutil.rmtree(work, ignore_errors=True)  # the last run's models, once this one can train
    held_out = val_digests(val_coco, val_images)
    check_real_copies(train_coco, train_images, held_out, split)
    write_yolo_split(val_coco, val_images, work / "val", class_index, segments=segments)
    arms = {"real_only": work / "real_only"}
    write_yolo_split(train_coco, train_images, arms["real_only"], class_index, segments=segments)
    n_real, n_synthetic = len(train_coco["images"]), 0
    if settings.synthetic:
        arms["augmented"] = work / "augmented"
        write_yolo_split(train_coco, train_images, arms["augmented"], class_index, "", segments)
        run = Path(settings.synthetic)
        val_ids = [str(image["id"]) for image in val_coco["images"]]
        renders = renders_of_held_out(run, val_location(settings), val_ids)
        if renders:
            log.warning(
                "%d images of %s were rendered from the real %s images, which a detector "
                "must not see: they are left out",
                len(renders),
                run,
                split,
            )
        synthetic, synthetic_images = synthetic_coco(
            run,
            work / "synthetic",
            category_ids,
            held_out,
            renders,
            split,
        )
        n_synthetic = write_yolo_split(
            synthetic, synthetic_images, arms["augmented"], class_index, "s", segments
        )
    names = {i: c["name"] for i, c in enumerate(categories)}
    ground_truth = {**val_coco, "categories": categories}
    plan, tasks = [], []
    for arm, train_dir in arms.items():
        # Equal compute: the smaller real-only set gets proportionally more epochs, so both
        # arms take about as many optimisation steps as the augmented arm.
        size = n_real + (n_synthetic if arm == "augmented" else 0)
        epochs = max(1, round(settings.epochs * (n_real + n_synthetic) / size))
        data_yaml = train_dir / "data.yaml"
        data_yaml.write_text(
            json.dumps(
                {
                    "path": str(work.resolve()),
                    "train": str(train_dir.resolve() / "images"),
                    "val": str((work / "val" / "images").resolve()),
                    "names": names,
                }
            )
        )
        for seed in range(settings.seeds):
            plan.append((arm, seed, epochs))
            tasks.append((data_yaml, work / "runs" / f"{arm}-{seed}", settings, seed, epochs))
    workers = settings.workers or detector_workers()
    with image_progress(len(tasks), "training detectors", unit="model") as advance:
        trained = in_processes(train_and_evaluate, tasks, workers, advance, fresh=True)
    rows = []
    for (arm, seed, epochs), (ultra, predictions, seconds) in zip(plan, trained, strict=True):
        for prediction in predictions:  # ultralytics writes category_id = class + 1
            prediction["category_id"] = categories[int(prediction["category_id"]) - 1]["id"]
            prediction["image_id"] = val_coco["images"][int(prediction["image_id"]) - 1]["id"]
        scores = coco_eval(ground_truth, predictions)
        masks = coco_eval(ground_truth, predictions, "segm") if segments else None
        base = {
            "task": "detect",
            "arm": arm,
            "ratio": n_synthetic / n_real if arm == "augmented" else 0.0,
            "ratio_trained": n_synthetic / n_real if arm == "augmented" else 0.0,
            "shots": 0,
            "seed": seed,
            "model": model_name(settings),
            "steps": epochs,
            "n_real": n_real,
            "n_synthetic": n_synthetic if arm == "augmented" else 0,
            "n_test": len(val_coco["images"]),
            "evaluated_on": evaluated_on,
            "wall_s": seconds,
        }
        metrics = [
            ("map50", "", scores["map50"]),
            ("map50_95", "", scores["map50_95"]),
            ("ultralytics_map50", "", ultra["map50"]),
            ("ultralytics_map50_95", "", ultra["map50_95"]),
        ]
        metrics += [("class_ap", name, value) for name, value in scores["per_class"].items()]
        if masks is not None:
            metrics += [
                ("mask_map50", "", masks["map50"]),
                ("mask_map50_95", "", masks["map50_95"]),
                ("ultralytics_mask_map50_95", "", ultra["mask_map50_95"]),
            ]
            metrics += [("mask_class_ap", n, v) for n, v in masks["per_class"].items()]
        rows += [{**base, "metric": m, "label": label, "value": v} for m, label, v in metrics]
    results = pd.DataFrame(rows)
    write_results(results, out, {"detect": asdict(settings)})
    scores = results[results["metric"] == "map50_95"].groupby("arm")
    for arm, best in scores["value"].max().items():
        if best == 0:  # each arm's own epochs: real-only trains more of them, on fewer images
            log.warning(
                "detector arm %s: mAP50:95 0.0 in every seed, it learnt nothing in %d epochs, "
                "so this comparison says nothing; train longer (augment bench detect --epochs)",
                arm,
                scores["steps"].max()[arm],
            )
    return results
