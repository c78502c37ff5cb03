"""Animations: the frames of each interpolation sequence as PNGs and an animated GIF.

Read from the shards like every export, so a resumed run writes them whole:
OUT/animations/<concept>_<sequence_id>/frame-000.png ... and <concept>_<sequence_id>.gif.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from augment.sinks.parquet import read_records
from augment.taxonomy.listfile import slugify

COLUMNS = ["item_id", "concept_name", "sequence_id", "frame", "image"]


def write_animations(out_dir: Path, frame_ms: int = 120) -> Path:
    """One folder of frames and one GIF per complete sequence; returns the animations folder."""
    folder = Path(out_dir) / "animations"
    folder.mkdir(parents=True, exist_ok=True)
    sequences: dict[str, list[dict]] = {}
    for record in read_records(Path(out_dir) / "shards", columns=COLUMNS):
        if record["sequence_id"] is not None:
            sequences.setdefault(record["sequence_id"], []).append(record)
    for sequence_id, frames in sorted(sequences.items()):
        frames.sort(key=lambda r: r["frame"])
        name = f"{slugify(frames[0]['concept_name'])}_{sequence_id}"
        frames_dir = folder / name
        frames_dir.mkdir(exist_ok=True)
        images = []
        for record in frames:
            data = record["image"]["bytes"]
            (frames_dir / f"frame-{record['frame']:03d}.png").write_bytes(data)
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        tmp = folder / f".{name}.gif.tmp"
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0
        )
        tmp.replace(folder / f"{name}.gif")
    return folder
