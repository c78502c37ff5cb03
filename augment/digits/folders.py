"""The folders the digits world's commands write, checked before any work: each replaces or
rewrites what it wrote before, and refuses a folder that holds anything else (a user's own
files, which it would delete or overwrite)."""

from __future__ import annotations

import json
from pathlib import Path

from augment.errors import AugmentError

#: The description a canvases annotations.json carries: what tells them from a user's COCO set.
CANVAS_DESCRIPTION = "digits on canvases (scikit-learn digits, real scans)"


def check_new_or_own(folder: Path, marker: str, what: str) -> None:
    """`folder` is missing, empty, or an earlier `what` (it holds `marker`); never the current
    folder or one holding it, which could not be replaced."""
    here = Path.cwd().resolve()
    if folder.resolve() == here or folder.resolve() in here.parents:
        raise AugmentError(
            f"{folder} is the current folder (or holds it); the {what} is written as a new "
            "folder: give one, such as models/digits"
        )
    if folder.exists() and not folder.is_dir():
        raise AugmentError(f"{folder} is a file; give a folder for the {what}")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).exists():
        held = sorted(path.name for path in folder.iterdir())
        raise AugmentError(
            f"{folder} holds {', '.join(held[:3])}{' ...' if len(held) > 3 else ''} and no "
            f"{marker}: not a {what} augment wrote, and writing one there would replace what "
            "it holds; give a new folder, or empty this one"
        )


def is_canvas_split(folder: Path) -> bool:
    """Whether `folder` holds canvases `real_canvases` wrote (its annotations.json says so)."""
    try:
        document = json.loads((folder / "annotations.json").read_text())
    except (OSError, ValueError):
        return False
    info = document.get("info") if isinstance(document, dict) else None
    return isinstance(info, dict) and info.get("description") == CANVAS_DESCRIPTION


def check_canvas_folder(folder: Path) -> None:
    """`folder` is missing, empty, or holds only canvases written before (train/, val/, test/): a
    user's COCO set there would be overwritten."""
    if folder.exists() and not folder.is_dir():
        raise AugmentError(f"{folder} is a file; give a folder for the canvases")
    if not folder.is_dir():
        return
    others = sorted(
        path.name
        for path in folder.iterdir()
        if path.name not in ("train", "val", "test") or not is_canvas_split(path)
    )
    if others:
        raise AugmentError(
            f"{folder} holds {', '.join(others[:3])}, which are not canvases augment wrote "
            "(train/ and val/ with their annotations.json), and writing canvases there would "
            "overwrite them: give a new folder, or empty this one"
        )


def check_demo_folder(out: Path, job_name: str) -> None:
    """The demo's OUT is missing, empty, or holds an earlier demo (its run's job.yaml, of the
    demo job): it writes a run, benchmarks, canvases, a report and a gallery there."""
    from augment.job import saved_job_spec

    if out.exists() and not out.is_dir():
        raise AugmentError(f"{out} is a file; give a folder for the demo (--out)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / "job.yaml").is_file() and saved_job_spec(out).name == job_name:
        return
    held = sorted(path.name for path in out.iterdir())
    raise AugmentError(
        f"{out} holds {', '.join(held[:3])}{' ...' if len(held) > 3 else ''} but no earlier "
        "demo (its job.yaml): the demo writes a run, benchmarks, canvases, a report and a "
        "gallery there, over what it holds; give a new folder (--out), or empty this one"
    )


def check_summary(path: Path) -> None:
    """A summary.json the novel-concept experiment adds its figures to (the demo's, a JSON
    object) or none: another file of that name is refused before hours of training, not
    found unreadable at their end."""
    if not path.exists():
        return
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        figures = None
    if not isinstance(figures, dict):
        raise AugmentError(
            f"{path} is not a demo's summary (a JSON object), and the experiment adds its "
            "figures to it: move it away, or give another --out"
        )
