"""Render work items into records.

A generator class loads its pipeline once in ``__init__`` and renders a list of work items in
``__call__``, so the same object runs alone in a test or as a Ray actor. Each image gets its own
CPU ``torch.Generator`` seeded from its work item: an item renders the same image whatever batch
or worker it lands in.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from augment.config import GenerationSpec
from augment.plan import WorkItem

#: An image whose brightest pixel is at most this (0..255) counts as black.
BLACK_MAX_VALUE = 4


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def to_uint8(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Float [0, 1] HWC -> uint8, and whether the float image held NaNs (then set to 0)."""
    has_nan = bool(np.isnan(image).any())
    image = np.nan_to_num(image, nan=0.0)
    return (image.clip(0, 1) * 255).round().astype(np.uint8), has_nan


class Txt2ImgGenerator:
    """Text-to-image through diffusers' StableDiffusionPipeline."""

    mode = "txt2img"

    def __init__(self, settings: GenerationSpec, base_dir: Path | None = None):
        from augment.generate.pipelines import load_txt2img_pipeline

        self.settings = settings
        self.pipe = load_txt2img_pipeline(
            settings.model, settings.dtype, settings.device, settings.scheduler, base_dir
        )

    def __call__(self, items: list[WorkItem]) -> list[dict]:
        records: list[dict] = []
        for batch in batches(items, self.settings.batch_size):
            records.extend(self.render_batch(batch))
        return records

    def render_batch(self, items: list[WorkItem]) -> list[dict]:
        import torch

        s = self.settings
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
        started = time.perf_counter()
        output = self.pipe(
            prompt=[item.prompt for item in items],
            negative_prompt=[item.negative_prompt for item in items],
            num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
            generator=generators,
            output_type="np",
        )
        seconds_per_image = (time.perf_counter() - started) / len(items)
        return [
            self.make_record(item, image, seconds_per_image)
            for item, image in zip(items, output.images, strict=True)
        ]

    def make_record(self, item: WorkItem, image: np.ndarray, render_s: float) -> dict:
        s = self.settings
        pixels, has_nan = to_uint8(image)
        return {
            "item_id": item.item_id,
            "concept_id": item.concept_id,
            "concept_name": item.concept_name,
            "synset": item.synset,
            "category_id": item.category_id,
            "prompt": item.prompt,
            "negative_prompt": item.negative_prompt,
            "mode": self.mode,
            "model": s.model,
            "scheduler": s.scheduler,
            "steps": s.num_inference_steps,
            "guidance": s.guidance_scale,
            "strength": None,
            "seed": item.seed,
            "width": pixels.shape[1],
            "height": pixels.shape[0],
            "source_image_id": item.source_image_id,
            "boxes": [],
            "image": {"bytes": encode_png(pixels), "path": f"{item.item_id}.png"},
            "clip_score": None,
            "black": bool(pixels.max() <= BLACK_MAX_VALUE),
            "nan": has_nan,
            "nsfw": False,
            "filtered": False,
            "render_s": render_s,
        }
