"""What the digits world adds to `builtin:` names (the `augment.builtins` entry point).

- models: ``builtin:digits`` (the diffusion model shipped in `model/`) and
  ``builtin:digits-scorer`` (the filter's classifier shipped in `scorer/`);
- sources: ``builtin:digits-canvases``, real digits on canvases with boxes (COCO), built once
  into the cache, for the source modes;
- real sets: ``digits``, the benchmark's fixed pool and test splits.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: The digits model trained by `augment digits train` and shipped inside the package.
SHIPPED_MODEL = Path(__file__).resolve().parent / "model"
#: The digits classifier that scores generated digits (`filters.scorer`), shipped beside it.
SHIPPED_SCORER = Path(__file__).resolve().parent / "scorer"


def shipped_model() -> Path:
    from augment.registry import shipped_folder

    return shipped_folder(SHIPPED_MODEL, "model_index.json", "augment digits train")


def shipped_scorer() -> Path:
    from augment.registry import shipped_folder

    return shipped_folder(SHIPPED_SCORER, "scorer.json", "augment digits train-scorer")


def canvases_source() -> Path:
    """32 train and 8 val canvases of real digits (COCO), built once into the cache."""
    from augment.cache import cache_dir
    from augment.digits.canvases import real_canvases

    folder = cache_dir() / "sources" / "digits-canvases-v1"
    if not (folder / "train" / "annotations.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".digits-canvases.", dir=folder.parent))
        real_canvases(tmp, train_count=32, val_count=8)
        try:
            tmp.rename(folder)
        except OSError:  # built by a concurrent run meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / "train"


def real_set() -> Callable:
    from augment.digits.data import real_digits

    return real_digits


def register(add: Callable[[str, str, Callable], None]) -> None:
    """Called by `augment.registry` with its `register` function."""
    add("model", "digits", shipped_model)
    add("model", "digits-scorer", shipped_scorer)
    add("source", "digits-canvases", canvases_source)
    add("real", "digits", real_set)
