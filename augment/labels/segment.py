"""Segment stage: a foreground mask and a tight box for the object a rendered image shows.

Generate -> Label -> Segment -> Filter -> Shards. A `Segmenter` is loaded once per worker,
beside the generator, and gives each record its object's mask as COCO compressed RLE
(pycocotools) at the image's size, with its pixel area. Where a `labels:` detector boxed the
image's own concept, the mask goes to its best box, which keeps its xywh box, score and
`labeller` (one object, one instance in exports); else the record gains a box of its own: the
concept's category, the mask's tight xywh box, a score where the method gives one, and the
method's name as `labeller`. The record's `mask_area` is the share of the image the mask
covers, and `bad_mask` flags a mask that is empty, covers (almost) the whole image, or covers
too much of the image border (a cut-off object, or background taken for the object): flagged,
not dropped, like the filter's flags.

Methods:
- `threshold`: pixels whose grey level differs from the background's (the median of the
  border pixels) by more than `threshold`; for plain dark or white backgrounds;
- `clipseg`: transformers' CLIPSeg prompted with the concept name, pixels whose probability
  reaches `threshold`;
- `sam`: transformers' SAM prompted with the box a `labels:` detector found for the image's
  concept, else the threshold mask's (the whole image when that is empty); the mask it scores
  best.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from augment.config import SegmentSpec
from augment.labels.models import check_model

#: Defaults of `segment.threshold` per method.
DEFAULT_THRESHOLDS = {"threshold": 40.0, "clipseg": 0.4, "sam": 0.0}
#: Images per forward pass of a learnt segmenter.
SEGMENT_BATCH = 16
#: The transformers model class each learnt method needs, as config.json names it.
MODEL_TYPES = {"clipseg": "clipseg", "sam": "sam"}


def threshold_mask(image: Image.Image, threshold: float = DEFAULT_THRESHOLDS["threshold"]):
    """Pixels whose grey level differs from the background's (the border's median)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return np.abs(grey - np.median(border)) > threshold


def mask_box(mask: np.ndarray) -> list[float] | None:
    """The tight xywh box of a mask's pixels, or None when it has none."""
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    return [float(x), float(y), float(cols[-1] - x + 1), float(rows[-1] - y + 1)]


def encode_rle(mask: np.ndarray) -> str:
    """A boolean mask as COCO compressed RLE counts (its size is the image's)."""
    from pycocotools import mask as coco_mask

    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def decode_rle(counts: str, height: int, width: int) -> np.ndarray:
    """The boolean mask of `encode_rle` counts."""
    from pycocotools import mask as coco_mask

    rle = {"size": [height, width], "counts": counts.encode("ascii")}
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= notice, on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle).astype(bool)


def mask_polygon(mask: np.ndarray) -> np.ndarray | None:
    """One closed polygon (n x 2, x y pixels) tracing a mask, for formats that hold one polygon
    an instance (YOLO segmentation). A mask in several parts, or with holes (a 0, an 8), is
    traced outline by outline, each joined to the path at its nearest point by a bridge of no
    width: a hole's outline runs the other way round, so the fill leaves it out (traced by its
    outer outlines alone, a 0 was a blob). A hole of one pixel is not traced.

    The outline runs along the pixels' outer edges: traced on the grid of pixel corners (a
    corner is in where a pixel beside it is), whose cell (row, column) lies at (y, x). Traced
    through the edge pixels' own positions, the pixels 40 to 59 ended at 59, and ultralytics,
    which takes a box from the polygon, trained on boxes a pixel short (IoU 0.9 with COCO's)."""
    import cv2

    inside = np.asarray(mask, dtype=bool)
    corners = np.zeros((inside.shape[0] + 1, inside.shape[1] + 1), dtype=np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            corners[dy : dy + inside.shape[0], dx : dx + inside.shape[1]] |= inside
    contours, _ = cv2.findContours(corners, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted(
        (c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= 3),
        key=len,
        reverse=True,
    )
    if not parts:
        return None
    path = parts[0]
    for part in parts[1:]:
        distance = ((path[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(distance.argmin()), distance.shape)
        around = np.roll(part, -j, axis=0)
        path = np.concatenate([path[: i + 1], around, around[:1], path[i:]])
    return path


def border_share(mask: np.ndarray) -> float:
    """The share of the image's border pixels that the mask covers."""
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(border.mean())


def instance(
    mask: np.ndarray, category_id: int, labeller: str, score: float | None = None
) -> dict | None:
    """A record box for a mask (None when the mask is empty)."""
    box = mask_box(mask)
    if box is None:
        return None
    return {
        "category_id": category_id,
        "bbox": box,
        "segmentation": [],
        "rle": encode_rle(mask),
        "area": float(mask.sum()),
        "score": score,
        "labeller": labeller,
    }


def check_segmenter(spec: SegmentSpec, location: str | None) -> str | None:
    """The learnt segmenter's folder or cached hub id; fails (before a run touches its output)
    when it is missing or is not the method's kind of model."""
    if spec.method == "threshold":
        return None
    examples = {"clipseg": "CIDAS/clipseg-rd64-refined", "sam": "facebook/sam-vit-base"}
    kinds = (MODEL_TYPES[spec.method],)
    return check_model("segment.model", spec.model, location, kinds, examples[spec.method])[0]


class Segmenter:
    """Loaded once per worker; `__call__` returns the records with their object's mask added."""

    def __init__(self, spec: SegmentSpec, location: str | None = None, device: str = "cpu"):
        self.spec = spec
        self.device = device
        self.threshold = (
            DEFAULT_THRESHOLDS[spec.method] if spec.threshold is None else spec.threshold
        )
        location = check_segmenter(spec, location)
        self.model = self.processor = None
        if spec.method == "clipseg":
            from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

            self.model = CLIPSegForImageSegmentation.from_pretrained(location).to(device).eval()
            self.processor = CLIPSegProcessor.from_pretrained(location)
        elif spec.method == "sam":
            from transformers import SamModel, SamProcessor

            self.model = SamModel.from_pretrained(location).to(device).eval()
            self.processor = SamProcessor.from_pretrained(location)

    def masks(
        self,
        images: list[Image.Image],
        names: list[str],
        prompts: list[list[float] | None] | None = None,
    ) -> list[tuple[np.ndarray, float | None]]:
        """(mask, score) for each image, its object named by `names`; SAM starts from the
        `prompts` box (xywh, a detector's) where there is one, else the threshold mask's."""
        images = [image.convert("RGB") for image in images]
        prompts = prompts or [None] * len(images)
        if self.spec.method == "threshold":
            return [(threshold_mask(image, self.threshold), None) for image in images]
        out = []
        for start in range(0, len(images), SEGMENT_BATCH):
            chunk = slice(start, start + SEGMENT_BATCH)
            if self.spec.method == "clipseg":
                out.extend(self._clipseg(images[chunk], names[chunk]))
            else:
                out.extend(self._sam(images[chunk], prompts[chunk]))
        return out

    def _clipseg(self, images, names):
        import torch

        prompts = [self.spec.prompt.format(name=name) for name in names]
        inputs = self.processor(text=prompts, images=images, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**inputs.to(self.device)).logits
        probabilities = torch.sigmoid(logits.reshape(len(images), 1, *logits.shape[-2:])).cpu()
        out = []
        for image, probability in zip(images, probabilities, strict=True):
            full = torch.nn.functional.interpolate(
                probability[None], size=(image.height, image.width), mode="bilinear"
            )[0, 0].numpy()
            mask = full >= self.threshold
            out.append((mask, float(full[mask].mean()) if mask.any() else 0.0))
        return out

    def _sam(self, images, prompts):
        import torch

        boxes = []
        for image, prompt in zip(images, prompts, strict=True):
            box = prompt or mask_box(threshold_mask(image, DEFAULT_THRESHOLDS["threshold"]))
            x, y, w, h = box if box is not None else (0, 0, image.width, image.height)
            boxes.append([[x, y, x + w, y + h]])
        inputs = self.processor(images=images, input_boxes=boxes, return_tensors="pt")
        with torch.no_grad():
            output = self.model(**inputs.to(self.device), multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            output.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
            mask_threshold=self.threshold,
        )
        scores = output.iou_scores.cpu()
        out = []
        for k, candidates in enumerate(masks):
            best = int(scores[k, 0].argmax())
            out.append((candidates[0, best].numpy().astype(bool), float(scores[k, 0, best])))
        return out

    def __call__(self, records: list[dict]) -> list[dict]:
        from augment.labels.autolabel import best_own_box

        images = [Image.open(io.BytesIO(r["image"]["bytes"])) for r in records]
        detected = [best_own_box(r) for r in records]
        prompts = [
            None if k is None else r["boxes"][k]["bbox"]
            for r, k in zip(records, detected, strict=True)
        ]
        found = self.masks(images, [r["concept_name"] for r in records], prompts)
        out = []
        for record, k, (mask, score) in zip(records, detected, found, strict=True):
            if k is not None:  # the detector's box keeps its xywh: its mask stays inside it
                mask = within_box(mask, record["boxes"][k]["bbox"])
            area = float(mask.mean())
            bad = (
                area < self.spec.min_area
                or area > self.spec.max_area
                or border_share(mask) > self.spec.max_border
            )
            box = instance(mask, record["category_id"], self.spec.method, score)
            out.append(
                {
                    **record,
                    "boxes": with_mask(list(record["boxes"] or []), box, k),
                    "mask_area": area,
                    "bad_mask": bool(bad),
                }
            )
        return out


def within_box(mask: np.ndarray, bbox) -> np.ndarray:
    """The mask's pixels inside a box (xywh, the pixels it reaches into): a clipseg or
    threshold mask of the whole image, given to a detector's box, made annotations whose mask
    and area lay far outside their box."""
    x, y, w, h = bbox
    inside = np.zeros_like(mask, dtype=bool)
    top, left = max(int(np.floor(y)), 0), max(int(np.floor(x)), 0)
    inside[top : int(np.ceil(y + h)), left : int(np.ceil(x + w))] = True
    return mask & inside


def with_mask(boxes: list[dict], masked: dict | None, detected: int | None) -> list[dict]:
    """A record's boxes with its object's mask: given to the detector's box of that object
    (index `detected`, the box SAM was prompted with), which keeps its box, score and labeller,
    so that the object stays one instance in exports; else added as a box of its own."""
    if masked is None:  # an empty mask: nothing to add
        return boxes
    if detected is None:
        return [*boxes, masked]
    boxes[detected] = {**boxes[detected], "rle": masked["rle"], "area": masked["area"]}
    return boxes
