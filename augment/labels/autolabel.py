"""Open-vocabulary auto-labels: a zero-shot detector boxes what each rendered image shows.

Generate -> Label -> Segment -> Filter -> Shards (DataDreamer's recipe). An `AutoLabeller` is
loaded once per worker, beside the generator, and adds to each record the boxes a detector finds
for the image's own concept (`concepts: own`) or for every concept of the job (`all`), each with
its score and the detector's kind as `labeller`; overlapping boxes of one concept are reduced by
NMS. `not_found` flags an image where no box of its own concept reaches the threshold: flagged,
not dropped. A segmenter after it gives the best box of the image's own concept its mask (SAM
is prompted with that box), so that an object stays one box.

Detectors: OWLv2 and OWL-ViT (one text query per concept, `prompt`), and Grounding DINO (the
concept names as one "a. b. c." text; a phrase maps back to the concept whose name it holds).
"""

from __future__ import annotations

import io

from PIL import Image

from augment.config import LabelSpec
from augment.labels.models import check_model
from augment.taxonomy import Concept
from augment.taxonomy.listfile import slugify

#: The detector kinds, as config.json's `model_type` names them.
DETECTORS = ("owlv2", "owlvit", "grounding-dino")
#: Images per detector forward pass.
LABEL_BATCH = 8


def check_detector(spec: LabelSpec, location: str | None) -> tuple[str, str]:
    """(location, kind) of the detector; fails before a run touches its output."""
    example = "google/owlv2-base-patch16-ensemble"
    return check_model("labels.detector", spec.detector, location, DETECTORS, example)


def xyxy_to_xywh(box, width: int, height: int) -> list[float]:
    """A corner box, clipped to the image, as COCO xywh."""
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(float(width), float(box[2])), min(float(height), float(box[3]))
    return [round(x0, 2), round(y0, 2), round(max(0.0, x1 - x0), 2), round(max(0.0, y1 - y0), 2)]


def concept_of_phrase(phrase: str, names: list[str]) -> int | None:
    """The index of the concept whose name a Grounding DINO phrase holds (the longest match)."""
    text = slugify(phrase)
    found = [(len(slugify(name)), k) for k, name in enumerate(names) if slugify(name) in text]
    return max(found)[1] if found else None


class AutoLabeller:
    """Loaded once per worker; `__call__` returns the records with the detector's boxes."""

    def __init__(
        self,
        spec: LabelSpec,
        location: str | None,
        concepts: list[Concept],
        device: str = "cpu",
    ):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        location, self.kind = check_detector(spec, location)
        self.spec = spec
        self.device = device
        # By category id: two concepts may share a name (WordNet's two synsets of one lemma).
        self.by_category = {c.category_id: c for c in concepts}
        self.first_of_name: dict[str, Concept] = {}
        for concept in concepts:
            self.first_of_name.setdefault(slugify(concept.name), concept)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(location).to(device)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(location)

    def queries(self, record: dict) -> list[Concept]:
        """The concepts to look for in a record's image: its own (by category id), or every
        concept of the job with one query per name, since a detector reads only the name and
        cannot tell two concepts of one name apart; the image's own concept answers for its
        name, else the job's first concept of that name."""
        own = self.by_category.get(record["category_id"])
        if self.spec.concepts == "own":
            return [own] if own is not None else []
        by_name = dict(self.first_of_name)
        if own is not None:  # takes its name's place, keeping the job's order of names
            by_name[slugify(own.name)] = own
        return list(by_name.values())

    def detect(self, images: list[Image.Image], wanted: list[list[Concept]]):
        """For each image, (concept, xyxy box, score) found among its wanted concepts."""
        import torch

        if self.kind == "grounding-dino":
            texts = [". ".join(c.name for c in w) + "." for w in wanted]
        else:
            texts = [[self.spec.prompt.format(name=c.name) for c in w] for w in wanted]
        # OWLv2's processor pads every query to its own fixed length: padding=True padded each
        # image's to its longest, and a batch of "car" and "bicycle" images could not be stacked
        padding = {"padding": True} if self.kind == "grounding-dino" else {}
        inputs = self.processor(images=images, text=texts, return_tensors="pt", **padding)
        with torch.no_grad():
            outputs = self.model(**inputs.to(self.device))
        if self.kind == "grounding-dino":
            sizes = [(image.height, image.width) for image in images]
            results = self.processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.spec.threshold,
                text_threshold=self.spec.threshold,
                target_sizes=sizes,
            )
        else:  # OWLv2 pads to a square at the bottom right: boxes are in the padded frame
            side = self.kind == "owlv2"
            sizes = [
                (max(image.size),) * 2 if side else (image.height, image.width) for image in images
            ]
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.spec.threshold, target_sizes=sizes
            )
        found = []
        for result, concepts in zip(results, wanted, strict=True):
            rows = []
            for k, (box, score) in enumerate(zip(result["boxes"], result["scores"], strict=True)):
                if self.kind == "grounding-dino":
                    index = concept_of_phrase(result["text_labels"][k], [c.name for c in concepts])
                else:
                    index = int(result["labels"][k])
                if index is not None:
                    rows.append((concepts[index], box.tolist(), float(score)))
            found.append(self.suppress(rows))
        return found

    def suppress(self, rows: list[tuple]) -> list[tuple]:
        """Per concept, drop boxes that overlap a better one by more than `nms_iou`."""
        if not rows:
            return rows
        import torch
        from torchvision.ops import batched_nms

        boxes = torch.tensor([r[1] for r in rows], dtype=torch.float32)
        scores = torch.tensor([r[2] for r in rows])
        groups = torch.tensor([r[0].category_id for r in rows])
        keep = batched_nms(boxes, scores, groups, self.spec.nms_iou)
        return [rows[int(k)] for k in keep]

    def __call__(self, records: list[dict]) -> list[dict]:
        out = []
        for start in range(0, len(records), LABEL_BATCH):
            chunk = records[start : start + LABEL_BATCH]
            images = [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in chunk]
            wanted = [self.queries(r) for r in chunk]
            searched = [k for k, w in enumerate(wanted) if w]
            found = dict(
                zip(
                    searched,
                    self.detect([images[k] for k in searched], [wanted[k] for k in searched])
                    if searched
                    else [],
                    strict=True,
                )
            )
            for k, record in enumerate(chunk):
                boxes = [
                    {
                        "category_id": concept.category_id,
                        "bbox": xyxy_to_xywh(box, record["width"], record["height"]),
                        "segmentation": [],
                        "score": score,
                        "labeller": self.kind,
                    }
                    for concept, box, score in found.get(k, [])
                ]
                boxes = [b for b in boxes if b["bbox"][2] > 0 and b["bbox"][3] > 0]
                own = any(b["category_id"] == record["category_id"] for b in boxes)
                out.append(
                    {
                        **record,
                        "boxes": list(record["boxes"] or []) + boxes,
                        "not_found": not own,
                    }
                )
        return out


def best_own_box(record: dict) -> int | None:
    """The index in the record's boxes of the detector's best-scoring box of its own concept,
    if it found one: the box SAM is prompted with, and the one the object's mask attaches to."""
    own = [
        (box["score"], k)
        for k, box in enumerate(record["boxes"] or [])
        if box["labeller"] in DETECTORS and box["category_id"] == record["category_id"]
    ]
    return max(own, key=lambda pair: pair[0])[1] if own else None
