"""Boxes for detection data: objects pasted onto canvases, with the boxes they land in.

A classifier-style image (one object, dark background) becomes detection data by pasting it,
scaled, onto a larger canvas: the box is the object's ink (pixels above a threshold), in canvas
coordinates, COCO xywh. Real and synthetic objects go through the same function, so the two
detection sets differ only in where their objects came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class Canvas:
    pixels: np.ndarray  # H x W x 3 uint8
    boxes: list[tuple[int, list[float]]]  # (category_id, [x, y, w, h])
    sources: list[str]  # ids of the pasted objects
    masks: list[np.ndarray] = field(default_factory=list)  # H x W bool: each object's ink


INK_THRESHOLD = 48  # grey level above which a pixel of a dark-background object is ink


def ink_box(patch: np.ndarray, threshold: int = INK_THRESHOLD) -> tuple[int, int, int, int] | None:
    """Tight (x, y, w, h) around pixels brighter than `threshold`, or None if there are none."""
    mask = patch.max(axis=-1) > threshold
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def overlaps(a: tuple, b: tuple, margin: int) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return not (
        ax + aw + margin <= bx
        or bx + bw + margin <= ax
        or ay + ah + margin <= by
        or by + bh + margin <= ay
    )


def compose_canvases(
    objects: np.ndarray,
    category_ids: np.ndarray,
    object_ids: list[str],
    count: int,
    size: int = 96,
    per_canvas: tuple[int, int] = (1, 3),
    scale: tuple[int, int] = (20, 32),
    seed: int = 0,
) -> list[Canvas]:
    """`count` canvases, each with 1..3 objects drawn (without replacement while they last),
    scaled to `scale` pixels, placed without overlap; the maximum of pixels where they meet.
    Each object's mask is its ink (`ink_box`'s threshold) where it landed."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(objects))
    cursor = 0
    canvases = []
    for _ in range(count):
        canvas = np.zeros((size, size, 3), np.uint8)
        placed: list[tuple] = []
        boxes, sources, masks = [], [], []
        for _ in range(rng.integers(per_canvas[0], per_canvas[1] + 1)):
            if cursor == len(order):
                order, cursor = rng.permutation(len(objects)), 0
            index = order[cursor]
            cursor += 1
            side = int(rng.integers(scale[0], scale[1] + 1))
            patch = np.asarray(Image.fromarray(objects[index]).resize((side, side), Image.BICUBIC))
            box = ink_box(patch)
            if box is None:
                continue
            for _attempt in range(20):
                x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
                where = (x + box[0], y + box[1], box[2], box[3])
                if not any(overlaps(where, other, margin=2) for other in placed):
                    break
            else:
                continue
            region = canvas[y : y + side, x : x + side]
            np.maximum(region, patch, out=region)
            placed.append(where)
            boxes.append((int(category_ids[index]), [float(v) for v in where]))
            sources.append(object_ids[index])
            mask = np.zeros((size, size), bool)
            mask[y : y + side, x : x + side] = patch.max(axis=-1) > INK_THRESHOLD
            masks.append(mask)
        canvases.append(Canvas(canvas, boxes, sources, masks))
    return canvases


def fitted_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """A source's render size: its aspect kept, the longer side `longest`, multiples of 8."""
    scale = longest / max(width, height)
    return (
        max(8, round(width * scale / 8) * 8),
        max(8, round(height * scale / 8) * 8),
    )


def scale_box(bbox: tuple, source_size: tuple[int, int], size: tuple[int, int]) -> list[float]:
    """An xywh box from source pixels to render pixels, clipped to the image."""
    sx, sy = size[0] / source_size[0], size[1] / source_size[1]
    x, y, w, h = bbox
    x0, y0 = max(0.0, x * sx), max(0.0, y * sy)
    x1, y1 = min(size[0], (x + w) * sx), min(size[1], (y + h) * sy)
    return [round(x0, 2), round(y0, 2), round(max(0.0, x1 - x0), 2), round(max(0.0, y1 - y0), 2)]


def transfer_boxes(
    boxes: list[tuple[int, tuple]], source_size: tuple[int, int], size: tuple[int, int]
) -> list[dict]:
    """(category_id, source xywh) pairs -> record boxes at the render size."""
    return [
        {"category_id": category_id, "bbox": scale_box(bbox, source_size, size), "segmentation": []}
        for category_id, bbox in boxes
    ]


def box_mask(boxes: list[list[float]], size: tuple[int, int], margin: int) -> Image.Image:
    """An inpainting mask: white (repaint) inside each box grown by `margin` pixels."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(np.floor(x)) - margin), max(0, int(np.floor(y)) - margin)
        x1 = min(size[0], int(np.ceil(x + w)) + margin)
        y1 = min(size[1], int(np.ceil(y + h)) + margin)
        mask[y0:y1, x0:x1] = 255
    return Image.fromarray(mask, mode="L")
