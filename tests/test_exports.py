"""Exports derived from shards: COCO (pycocotools), YOLO (ultralytics trains), ImageFolder."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from augment.sinks import export
from augment.sinks.parquet import write_shard
from tests.conftest import train_yolo_one_epoch

AUGMENT = str(Path(sys.executable).parent / "augment")
CATEGORIES = [
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]


def png_with_boxes(size: int, boxes: list[tuple[int, int, int, int]]) -> bytes:
    pixels = np.zeros((size, size, 3), np.uint8)
    for x, y, w, h in boxes:
        pixels[y : y + h, x : x + w] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def record(index: int, category: dict, boxes: list[tuple[int, int, int, int]], **flags) -> dict:
    return {
        "item_id": f"item{index:04d}",
        "concept_id": category["name"],
        "concept_name": "../../" + category["name"] if index == 0 else category["name"],
        "category_id": category["id"],
        "prompt": f"a {category['name']}",
        "mode": "txt2img",
        "seed": index,
        "width": 64,
        "height": 64,
        "boxes": [
            {"category_id": category["id"], "bbox": [float(v) for v in box], "segmentation": []}
            for box in boxes
        ],
        "image": {"bytes": png_with_boxes(64, boxes), "path": f"item{index:04d}.png"},
        "black": False,
        "nan": False,
        "nsfw": False,
        "filtered": False,
        **flags,
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder with 16 images with boxes, one of them flagged black."""
    rng = np.random.default_rng(0)
    records = []
    for index in range(16):
        category = CATEGORIES[index % 2]
        x, y = (int(v) for v in rng.integers(2, 30, 2))
        records.append(record(index, category, [(x, y, 24, 20)], black=index == 15))
    write_shard(tmp_path / "shards", "part-00000.parquet", records[:10])
    write_shard(tmp_path / "shards", "part-00001.parquet", records[10:])
    (tmp_path / "manifest.json").write_text(json.dumps({"categories": CATEGORIES}))
    return tmp_path


def test_coco_export_keeps_ids_boxes_and_leaves_flagged_out(run_dir):
    from pycocotools.coco import COCO

    export(run_dir, ["coco"])
    coco = COCO(str(run_dir / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 15  # the black one is left out
    assert sorted(coco.getCatIds()) == [3, 18]
    annotation = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    assert annotation["bbox"][2:] == [24.0, 20.0] and annotation["area"] == 480.0
    names = [image["file_name"] for image in coco.loadImgs(coco.getImgIds())]
    assert all("/" not in name and ".." not in name for name in names)  # '../../car' sanitized
    assert len(list((run_dir / "coco" / "images").iterdir())) == 15
    assert not any("flags" in image for image in coco.loadImgs(coco.getImgIds()))
    export(run_dir, ["coco"], include_flagged=True)  # the flagged image kept says it is one
    images = json.loads((run_dir / "coco" / "annotations.json").read_text())["images"]
    assert [(i["item_id"], i["flags"]) for i in images if "flags" in i] == [("item0015", ["black"])]


def test_imagefolder_export_has_one_folder_per_class(run_dir):
    """A folder per class and nothing else but the hidden record of how it was made, which
    torchvision's ImageFolder passes by."""
    from torchvision.datasets import ImageFolder

    export(run_dir, ["imagefolder"], include_flagged=True)
    root = run_dir / "imagefolder"
    assert sorted(p.name for p in root.iterdir()) == [".augment-export.json", "car", "dog"]
    assert len(list((root / "car").iterdir())) == len(list((root / "dog").iterdir())) == 8
    assert ImageFolder(str(root)).classes == ["car", "dog"] and len(ImageFolder(str(root))) == 16


def test_imagefolder_keeps_same_named_classes_apart_and_makes_no_empty_folder(tmp_path):
    """WordNet has two 'griffon' synsets: one folder would merge two classes; and
    torchvision's ImageFolder refuses a class folder with no image."""
    from torchvision.datasets import ImageFolder

    from augment.sinks.imagefolder import export_imagefolder

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    categories = [
        {"id": 1, "name": "griffon"},
        {"id": 2, "name": "griffon"},
        {"id": 3, "name": "pug"},
        {"id": 4, "name": "poodle"},
    ]
    records = [
        {"item_id": f"i{n}", "concept_name": c["name"], "category_id": c["id"]}
        | {"image": {"bytes": png.getvalue()}}
        for n, c in enumerate(categories[:3])
    ]
    export_imagefolder(tmp_path, categories, records)
    assert ImageFolder(str(tmp_path)).classes == ["griffon-1", "griffon-2", "pug"]


def test_coco_and_yolo_keep_same_named_classes_apart(tmp_path):
    """Both exports called WordNet's two 'griffon' synsets 'griffon': pycocotools'
    getCatIds(catNms=...) and a detector's class table could not tell them apart."""
    from pycocotools.coco import COCO

    from augment.sinks.coco import export_coco
    from augment.sinks.yolo import export_yolo

    categories = [
        {"id": 1, "name": "griffon", "supercategory": "dog", "concept_id": "griffon.n.02"},
        {"id": 2, "name": "griffon", "supercategory": "dog", "concept_id": "griffon.n.03"},
        {"id": 3, "name": "pug", "supercategory": "dog", "concept_id": "pug.n.01"},
    ]
    coco = COCO(str(export_coco(tmp_path / "coco", categories, [])))
    names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
    assert names == ["griffon (griffon.n.02)", "griffon (griffon.n.03)", "pug"]
    assert coco.getCatIds(catNms=["griffon (griffon.n.03)"]) == [2]
    data = yaml.safe_load(export_yolo(tmp_path / "yolo", categories, []).read_text())
    assert list(data["names"].values()) == names


def test_yolo_labels_are_normalised_center_boxes(run_dir):
    export(run_dir, ["yolo"])
    data = yaml.safe_load((run_dir / "yolo" / "data.yaml").read_text())
    assert "download" not in data
    assert data["names"] == {0: "car", 1: "dog"} and data["category_ids"] == {0: 3, 1: 18}
    label = next((run_dir / "yolo" / "labels").glob("dog_item0001.txt")).read_text().split()
    assert label[0] == "1" and [float(v) for v in label[3:]] == [24 / 64, 20 / 64]


@pytest.mark.slow
def test_yolo_export_trains_one_epoch_offline(run_dir, tmp_path, monkeypatch):
    export(run_dir, ["yolo"])
    data = run_dir / "yolo" / "data.yaml"
    assert train_yolo_one_epoch(data, tmp_path, monkeypatch, imgsz=64).is_file()


def test_cli_export_and_its_errors(run_dir, tmp_path):
    result = subprocess.run(
        [AUGMENT, "export", str(run_dir), "--format", "coco", "--format", "yolo"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "annotations.json" in result.stdout and "data.yaml" in result.stdout
    empty = subprocess.run(
        [AUGMENT, "export", str(tmp_path / "nothing"), "--format", "coco"],
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 2 and "no such folder" in empty.stderr


def test_imagefolder_files_single_class_composites_and_says_why_a_class_has_no_folder(
    tmp_path, caplog
):
    """A paste composite showing several classes was filed under its first instance's class
    in silence, and a class without images was always said to be "every one flagged"."""
    from collections import Counter

    from torchvision.datasets import ImageFolder

    from augment.sinks.imagefolder import export_imagefolder

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    names = ["griffon", "griffon", "pug", "poodle", "beagle"]
    categories = [{"id": n + 1, "name": name} for n, name in enumerate(names)]

    def record(item_id: str, category_id: int, mode: str, boxes: list[int]) -> dict:
        return {
            "item_id": item_id,
            "concept_name": names[category_id - 1],
            "category_id": category_id,
            "mode": mode,
            "boxes": [{"category_id": c, "bbox": [0, 0, 4, 4]} for c in boxes],
            "image": {"bytes": png.getvalue()},
        }

    records = [
        record("render", 3, "txt2img", [3, 4]),  # a render's class is its concept
        record("one-class", 1, "paste", [1, 1]),  # every box a griffon-1
        record("two-classes", 1, "paste", [1, 4]),  # a griffon-1 and a poodle
    ]
    export_imagefolder(tmp_path, categories, records, flagged=Counter({2: 3}), unread={})
    assert ImageFolder(str(tmp_path)).classes == ["griffon-1", "pug"]
    assert [p.name for p in (tmp_path / "griffon-1").iterdir()] == ["griffon_one-class.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "imagefolder: 1 paste composite showing several classes left out (ImageFolder gives an "
        "image one class; the coco and yolo exports keep it)",
        "imagefolder: every image of griffon is flagged (--include-flagged keeps them): no "
        "folder for it",
        "imagefolder: the images of poodle all show several classes (paste composites): no "
        "folder for it",
        "imagefolder: no image of the run has beagle as its class: no folder for it",
    ]
    # a --limit trial of a large taxonomy: the warning names ten classes, then counts the rest
    caplog.clear()
    many = [{"id": n, "name": f"class{n}", "supercategory": ""} for n in range(1, 26)]
    export_imagefolder(tmp_path / "many", many, [], flagged=Counter(), unread={})
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == (
        "imagefolder: no image of the run has class1, class2, class3, class4, class5, class6, "
        "class7, class8, class9, class10 and 15 more classes as its class: no folder for them"
    )


def test_imagefolder_names_flagged_or_unreadable_as_the_cause_of_a_missing_class(tmp_path, caplog):
    """Through `export`: a class whose images are all flagged, and one whose shard cannot be
    read, were both said to be "every one flagged"."""
    car, dog = CATEGORIES
    flagged = tmp_path / "flagged"
    write_shard(flagged / "shards", "part-00000.parquet", [record(1, car, [(2, 2, 8, 8)])])
    write_shard(flagged / "shards", "part-00001.parquet", [record(2, dog, [], filtered=True)])
    (flagged / "manifest.json").write_text(json.dumps({"categories": CATEGORIES}))
    export(flagged, ["imagefolder"])
    assert "imagefolder: every image of dog is flagged (--include-flagged keeps them)" in (
        caplog.text
    )
    caplog.clear()
    unread = tmp_path / "unread"
    shutil.copytree(flagged, unread)
    shutil.rmtree(unread / "imagefolder")
    (unread / "shards" / "part-00001.parquet").write_bytes(b"junk")
    export(unread, ["imagefolder"])
    assert "imagefolder: no image of dog in the shards that could be read (1 could not)" in (
        caplog.text
    )
    assert "is flagged" not in caplog.text
