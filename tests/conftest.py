"""Shared fixtures: a private model cache and small job specs written on the fly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.cli import main
from augment.sinks.parquet import write_shard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builtin models are built once per test session, in a temp folder."""
    cache = tmp_path_factory.mktemp("augment-cache")
    os.environ["AUGMENT_CACHE"] = str(cache)
    return cache


TINY_JOB = """\
name: tiny
seed: 7
taxonomy:
  source: digits
  max_concepts: 3
prompts:
  templates: ["a handwritten digit {name}"]
  images_per_concept: 3
generation:
  model: builtin:tiny-sd
  num_inference_steps: 3
  height: 32
  width: 32
  batch_size: 4
output:
  dir: OUT_DIR
  rows_per_shard: 4
"""


@pytest.fixture
def write_job(tmp_path: Path):
    """Write a job YAML (TINY_JOB by default) into tmp_path and return its path."""

    def write(text: str = TINY_JOB, name: str = "job.yaml", out: Path | None = None) -> Path:
        path = tmp_path / name
        path.write_text(text.replace("OUT_DIR", str(out or tmp_path / "out")))
        return path

    return write


@pytest.fixture(scope="session")
def ray_session(model_cache):
    """One local Ray for the whole session: start-up dominates small tests."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def images_by_item(out: Path) -> dict[str, bytes]:
    """item_id -> PNG bytes of every committed record in OUT/shards."""
    import pyarrow.parquet as pq

    table = pq.read_table(out / "shards", columns=["item_id", "image"]).to_pylist()
    return {row["item_id"]: row["image"]["bytes"] for row in table}


def cli(capsys, *args) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of `augment ARGS`, run in this process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse refusing an option
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one line a failure prints; fails the test if there is more, or a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`augment ARGS` run in this process (the same `main` as the console script, without the
    seconds a new Python spends importing torch), as a finished process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(
        ["augment", *args], code, stdout.getvalue(), stderr.getvalue()
    )


def train_yolo_one_epoch(
    data_yaml: Path, tmp_path: Path, monkeypatch, imgsz: int, model: str = "yolov8n.yaml"
) -> Path:
    """Train a YOLO from its yaml for one epoch on an export, offline; the last weights."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "0")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    from ultralytics import YOLO

    YOLO(model).train(
        data=str(data_yaml),
        epochs=1,
        imgsz=imgsz,
        batch=8,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        project=str(tmp_path / "runs"),
        name="smoke",
        verbose=False,
    )
    return tmp_path / "runs" / "smoke" / "weights" / "last.pt"


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_fake_run(
    out: Path, images: np.ndarray, labels: np.ndarray, flags: dict[str, list[bool]] | None = None
) -> Path:
    """An `augment run`-shaped folder holding the given images as 'synthetic' records, with
    `flags` (flag -> one value per image) set as given, the others False."""
    records = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        records.append(
            {
                "item_id": f"fake{index:05d}",
                "concept_id": DIGITS[label],
                "concept_name": DIGITS[label],
                "category_id": int(label) + 1,
                "width": image.shape[1],
                "height": image.shape[0],
                "boxes": [],
                "image": {"bytes": buffer.getvalue(), "path": None},
                "black": False,
                "nan": False,
                "nsfw": False,
                "filtered": False,
                **{flag: bool(values[index]) for flag, values in (flags or {}).items()},
            }
        )
    write_shard(out / "shards", "part-00000.parquet", records)
    categories = [{"id": i + 1, "name": n, "supercategory": "digit"} for i, n in enumerate(DIGITS)]
    (out / "manifest.json").write_text(json.dumps({"categories": categories}))
    return out


def in_hub_cache(folder: Path, repo_id: str, cache: Path, monkeypatch) -> Path:
    """`folder` downloaded as hub model `repo_id` into a Hugging Face cache at `cache`
    (snapshots/<commit>, refs/main), which huggingface_hub then reads; returns the snapshot."""
    import shutil

    import huggingface_hub.constants

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = Path(shutil.copytree(folder, repo / "snapshots" / commit))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return snapshot
