"""Does the invisible watermark survive a JPEG re-encode, and is it absent without it?

Renders `--images` digits at 256 px with `generation.watermark` on and as many with it off
(the shipped digits model, 10 DDIM steps), re-encodes every PNG as JPEG at `--quality`, and
counts the images where `augment.provenance.has_watermark` reads it back. Prints the counts and
writes OUT/watermark.json.

    python scripts/watermark_check.py --out DIR [--images 100] [--quality 90]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from augment.api import load_spec, run
from augment.provenance import has_watermark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    report: dict = {"images": args.images, "quality": args.quality, "size": args.size}
    for marked in (True, False):
        started = time.perf_counter()
        out = args.out / f"watermark-{marked}"
        spec = load_spec(
            {
                "name": "watermark-check",
                "seed": 1,
                "taxonomy": {"source": "digits"},
                "prompts": {
                    "templates": ["a handwritten digit {name}"],
                    "images_per_concept": -(-args.images // 10),
                },
                "limit": args.images,
                "generation": {
                    "model": "builtin:digits",
                    "scheduler": "DDIM",
                    "num_inference_steps": 10,
                    "guidance_scale": 1.0,
                    "height": args.size,
                    "width": args.size,
                    "batch_size": 10,
                    "watermark": marked,
                },
                "output": {"dir": str(out), "formats": ["parquet"]},
            }
        )
        run(spec, distributor="local", force=True)
        rows = pq.read_table(out / "shards", columns=["image"]).to_pylist()
        found = 0
        for row in rows:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB").save(
                buffer, "JPEG", quality=args.quality
            )
            found += has_watermark(np.asarray(Image.open(buffer).convert("RGB")))
        name = "with_watermark" if marked else "without"
        report[name] = {
            "rendered": len(rows),
            "found_after_jpeg": int(found),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(name, report[name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "watermark.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
