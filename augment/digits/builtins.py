"""What the digits world adds to `builtin:` names (the `augment.builtins` entry point).

- models: ``builtin:digits`` (the diffusion model shipped in `model/`),
  ``builtin:digits-without-nine`` (the same, trained without a single nine: the novel-concept
  experiment's base, in `model-without-nine/`) and ``builtin:digits-scorer`` (the filter's
  classifier shipped in `scorer/`);
- sources: ``builtin:digits-canvases``, real digits on canvases with boxes (COCO), built once
  into the cache, for the source modes; ``builtin:digits-pool``, the 300 real digits of the
  `pool` split as an image folder (``<name>/<index>.png``), for fine-tuning;
- real sets: ``digits``, the benchmark's fixed pool and test splits.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: The digits model trained by `augment digits train` and shipped inside the package.
SHIPPED_MODEL = Path(__file__).resolve().parent / "model"
#: The same model trained without the class "nine" (`augment digits train --without nine`).
SHIPPED_MODEL_WITHOUT_NINE = Path(__file__).resolve().parent / "model-without-nine"
#: The digits classifier that scores generated digits (`filters.scorer`), shipped beside it.
SHIPPED_SCORER = Path(__file__).resolve().parent / "scorer"


def shipped_model() -> Path:
    from augment.registry import shipped_folder

    return shipped_folder(SHIPPED_MODEL, "model_index.json", "augment digits train")


def shipped_model_without_nine() -> Path:
    from augment.registry import shipped_folder

    return shipped_folder(
        SHIPPED_MODEL_WITHOUT_NINE, "model_index.json", "augment digits train --without nine"
    )


def shipped_scorer() -> Path:
    from augment.registry import shipped_folder

    return shipped_folder(SHIPPED_SCORER, "scorer.json", "augment digits train-scorer")


def canvases_source() -> Path:
    """32 train and 8 val canvases of real digits (COCO, no test split), built once into the
    cache."""
    from augment.cache import cache_dir
    from augment.digits.canvases import real_canvases

    folder = cache_dir() / "sources" / "digits-canvases-v1"
    if not (folder / "train" / "annotations.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".digits-canvases.", dir=folder.parent))
        real_canvases(tmp, train_count=32, val_count=8, test_count=0)
        try:
            tmp.rename(folder)
        except OSError:  # built by a concurrent run meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / "train"


def blank_canvas_source() -> Path:
    """One black 96 px canvas (a flat image folder): the background the demo pastes its
    rendered digits onto, `paste.images_per_background` times, for the detector's synthetic
    arm (the real canvases are black too)."""
    from PIL import Image

    from augment.cache import cache_dir
    from augment.digits.canvases import CANVAS_SIZE

    folder = cache_dir() / "sources" / "digits-blank-canvas-v1"
    if not (folder / "canvas.png").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".canvas.png.tmp"
        Image.new("RGB", (CANVAS_SIZE, CANVAS_SIZE)).save(tmp, format="PNG")
        tmp.replace(folder / "canvas.png")
    return folder


def pool_source() -> Path:
    """The `pool` split (30 real digits per class, never seen by the digits model) as an image
    folder, built once into the cache: the real images a fine-tune may learn from."""
    from PIL import Image

    from augment.cache import cache_dir
    from augment.digits.data import DIGIT_NAMES, digit_splits, load_digit_images

    folder = cache_dir() / "sources" / "digits-pool-v1"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".digits-pool.", dir=folder.parent))
        images, labels = load_digit_images(32)
        for index in digit_splits()["pool"]:
            target = tmp / DIGIT_NAMES[labels[index]] / f"{index:04d}.png"
            target.parent.mkdir(exist_ok=True)
            Image.fromarray(images[index]).save(target)
        try:
            tmp.rename(folder)
        except OSError:  # built by a concurrent run meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def real_set() -> Callable:
    from augment.digits.data import real_digits

    return real_digits


def register(add: Callable[[str, str, Callable], None]) -> None:
    """Called by `augment.registry` with its `register` function."""
    add("model", "digits", shipped_model)
    add("model", "digits-without-nine", shipped_model_without_nine)
    add("model", "digits-scorer", shipped_scorer)
    add("source", "digits-canvases", canvases_source)
    add("source", "digits-blank-canvas", blank_canvas_source)
    add("source", "digits-pool", pool_source)
    add("real", "digits", real_set)
