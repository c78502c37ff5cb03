"""Filter stage: score each generated image and flag the ones that do not show their concept.

Generate -> Filter -> Shards. An `ImageFilter` is loaded once per worker, beside the generator,
and fills three columns of each record before its shard is written:

- `concept_score`: the probability a scorer gives the image's own concept, among the job's
  concepts (how well the concept is rendered, as in Stöckl 2022);
- `clip_score`: CLIP scorers only, 100 x the cosine between the image and its prompt;
- `filtered`: a score under the spec's minimum.

Nothing is deleted: a filtered image stays in its shard with its scores, and exports and
benchmarks leave it out, like black or NSFW images (`augment export --include-flagged` keeps it).

Scorers:
- an augment image classifier folder (`scorer.json` + `model.safetensors`, written by
  `augment.classifier.save_classifier`), whose classes cover the job's concepts:
  `builtin:digits-scorer`, trained on the digits generator split, the data the digits model saw;
- a CLIP model (a transformers folder, or a hub id already in the local cache), zero-shot over
  the job's concept names.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from augment.classifier import (
    CLASSIFIER_CONFIG,
    load_classifier,
    logits_and_features,
    to_array,
    to_tensor,
)
from augment.config import FilterSpec, looks_like_hub_id
from augment.errors import ModelError, first_line
from augment.labels.models import model_type
from augment.taxonomy.listfile import slugify

#: Zero-shot CLIP text for a concept.
CLIP_CONCEPT_TEMPLATE = "a photo of a {name}"
#: Images per scorer forward pass.
SCORE_BATCH = 64


#: The transformers model types `ClipScorer` loads (as `CLIPModel`).
CLIP_MODEL_TYPES = ("clip",)


def check_scorer_location(location: str, declared: str) -> str:
    """A scorer folder, or a hub id in the local cache (resolved from the spec's `declared`
    name when it was loaded); nothing is downloaded. A transformers model that is not CLIP is
    refused by its config's `model_type` before anything loads it: loaded as CLIP, an OWLv2
    or CLIPSeg flagged every image, and others failed deep inside transformers."""
    from augment.generate.pipelines import hub_snapshot

    path = Path(location)
    if path.exists():
        if path.is_dir() and (path / CLASSIFIER_CONFIG).is_file():
            return location
        folder = path if path.is_dir() else None
    elif looks_like_hub_id(location) and (folder := hub_snapshot(location)) is not None:
        pass
    else:
        raise ModelError(
            f"filters.scorer: '{declared}' not found: give an augment classifier folder, a CLIP "
            "model folder, a CLIP hub id already in the Hugging Face cache (e.g. "
            "openai/clip-vit-large-patch14), or builtin:digits-scorer"
        )
    if folder is not None and model_type(folder) in CLIP_MODEL_TYPES:
        return location
    named = declared if declared.startswith("builtin:") or declared == location else location
    raise ModelError(
        f"filters.scorer: {named} is {what_model(folder)}, not a CLIP model or an augment "
        "classifier; give a CLIP model (a folder, or a hub id in the cache such as "
        "openai/clip-vit-large-patch14) or a classifier folder such as builtin:digits-scorer"
    )


def what_model(folder: Path | None) -> str:
    """What a folder that is no scorer holds, for the refusal: "an owlv2 model", ..."""
    if folder is None:
        return "a file"
    if (folder / "model_index.json").is_file():
        return "a diffusers pipeline"
    kind = model_type(folder)
    if kind is not None:
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} model"
    if (folder / "config.json").is_file():
        return "a folder whose config.json names no model_type"
    return f"a folder with neither config.json nor {CLASSIFIER_CONFIG}"


def is_classifier(location: str) -> bool:
    return (Path(location) / CLASSIFIER_CONFIG).is_file()


def concept_columns(classes: list[str], concepts: list[str], location: str) -> list[int]:
    """For each concept, its column among the classifier's classes (matched as slugs)."""
    index = {slugify(name): i for i, name in enumerate(classes)}
    missing = [name for name in concepts if slugify(name) not in index]
    if missing:
        raise ModelError(
            f"filters.scorer: the classifier {location} knows {', '.join(classes)}, not "
            f"{', '.join(missing)}; use a scorer trained on the job's concepts, or a CLIP model"
        )
    return [index[slugify(name)] for name in concepts]


def classifier_classes(location: str) -> list[str]:
    """The class names an augment classifier's config lists, or an error naming the file."""
    path = Path(location) / CLASSIFIER_CONFIG
    try:
        classes = json.loads(path.read_text()).get("classes")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"filters.scorer: {path} cannot be read ({first_line(exc)})") from None
    if not isinstance(classes, list) or not classes:
        raise ModelError(
            f"filters.scorer: {path} lists no classes: it is not an augment classifier's "
            "config; train one (augment digits train-scorer) or use a CLIP model"
        )
    return classes


def check_scorer(spec: FilterSpec, location: str | None, concepts: list[str]) -> str | None:
    """The scorer's location; fails (before a run touches its output) when it cannot score."""
    if spec.scorer is None or location is None:
        return None
    location = check_scorer_location(location, spec.scorer)
    if is_classifier(location):
        if spec.min_clip_score > 0:  # a classifier gives no CLIP score to compare it with
            raise ModelError(
                f"filters.min_clip_score: {location} is a classifier, which gives no CLIP "
                "score; set min_clip_score: 0 and use min_concept_score, or a CLIP scorer"
            )
        concept_columns(classifier_classes(location), concepts, location)
    elif spec.min_concept_score > 0 and len(concepts) < 2:
        raise ModelError(
            "filters.min_concept_score: a CLIP scorer compares each image with the job's "
            "concepts, and this job has one; set min_concept_score: 0 and use min_clip_score"
        )
    return location


@dataclass
class Scores:
    """A scorer's verdict on a batch of images."""

    probabilities: np.ndarray  # images x the job's concepts
    clip: np.ndarray | None  # CLIP scorers: 100 x cosine(image, prompt)
    features: np.ndarray  # images x the scorer's features (diversity, duplicates, distances)


def is_low(spec: FilterSpec, concept_score: float | None, clip_score: float | None) -> bool:
    """Whether scores fall under the spec's minimums (what `filtered` means)."""
    return (concept_score is not None and concept_score < spec.min_concept_score) or (
        clip_score is not None and clip_score < spec.min_clip_score
    )


class ClassifierScorer:
    """An augment image classifier: softmax over the job's concept columns."""

    def __init__(self, location: str, concepts: list[str], device: str = "cpu"):
        model, config = load_classifier(location)
        self.image_size = int(config["image_size"])
        self.columns = concept_columns(config["classes"], concepts, location)
        self.device = device
        self.model = model.to(device)

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> Scores:
        import torch

        pixels = np.stack([to_array(image, self.image_size) for image in images])
        with torch.no_grad():
            logits, features = logits_and_features(self.model, to_tensor(pixels).to(self.device))
        probabilities = torch.softmax(logits[:, self.columns].float(), dim=1)
        return Scores(probabilities.cpu().numpy(), None, features.float().cpu().numpy())


class ClipScorer:
    """CLIP: zero-shot over the job's concepts, and the CLIP score of each image's prompt."""

    def __init__(self, location: str, concepts: list[str], device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(location).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(location)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"filters.scorer: cannot load a CLIP model from {location} ({first_line(exc)})"
            ) from None
        self.device = device
        with torch.no_grad():
            texts = [CLIP_CONCEPT_TEMPLATE.format(name=name) for name in concepts]
            self.concepts = self.text_embeddings(texts)

    def text_embeddings(self, texts: list[str]):
        tokens = self.processor.tokenizer(
            texts, padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        return normalized(self.model.get_text_features(**tokens))

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> Scores:
        import torch

        with torch.no_grad():
            pixels = self.processor.image_processor(
                [image.convert("RGB") for image in images], return_tensors="pt"
            )["pixel_values"].to(self.device)
            embeds = normalized(self.model.get_image_features(pixel_values=pixels))
            logits = self.model.logit_scale.exp() * embeds @ self.concepts.T
            cosine = (embeds * self.text_embeddings(prompts)).sum(dim=1)
        probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        clip = (100.0 * cosine.clamp(min=0)).float().cpu().numpy()
        return Scores(probabilities, clip, embeds.float().cpu().numpy())


def normalized(features):
    """Unit vectors; accepts a tensor or a model output holding `pooler_output`."""
    if not hasattr(features, "norm"):
        features = features.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


def load_scorer(location: str, concepts: list[str], device: str = "cpu"):
    """A classifier or CLIP scorer over the job's concepts (its location checked first)."""
    scorer_class = ClassifierScorer if is_classifier(location) else ClipScorer
    return scorer_class(location, concepts, device)


def scorer_features(location: str, concepts: list[str], images: list[Image.Image]) -> np.ndarray:
    """The scorer's features of images (real ones, say), as the filter stores them for renders:
    the same numbers, so the two sets can be compared."""
    scorer = load_scorer(location, concepts)
    batches = [images[start : start + SCORE_BATCH] for start in range(0, len(images), SCORE_BATCH)]
    parts = [scorer(batch, [""] * len(batch)).features for batch in batches]
    return np.concatenate(parts) if parts else np.zeros((0, 1))


class ImageFilter:
    """Loaded once per worker; `__call__` returns the records with scores and `filtered` set."""

    def __init__(self, spec: FilterSpec, location: str, concepts: list[str], device: str = "cpu"):
        if spec.scorer is None:
            raise ValueError("ImageFilter needs filters.scorer")
        location = check_scorer(spec, location, concepts)
        # one class a name: two concepts of one name (WordNet's two senses of a word) split a
        # CLIP text's probability in halves, and both were flagged as far from their concept
        first: dict[str, str] = {}
        for name in concepts:
            first.setdefault(slugify(name), name)
        names = list(first.values())
        self.spec = spec
        self.scorer = load_scorer(location, names, device)
        self.concepts = names
        self.concept_index = {slugify(name): i for i, name in enumerate(names)}

    def __call__(self, records: list[dict]) -> list[dict]:
        scored: list[dict] = []
        for start in range(0, len(records), SCORE_BATCH):
            scored.extend(self.score_batch(records[start : start + SCORE_BATCH]))
        return scored

    def score_batch(self, records: list[dict]) -> list[dict]:
        images = [Image.open(io.BytesIO(r["image"]["bytes"])) for r in records]
        scores = self.scorer(images, [r["prompt"] for r in records])
        out = []
        for row, record in enumerate(records):
            concept = float(
                scores.probabilities[row, self.concept_index[slugify(record["concept_name"])]]
            )
            clip = None if scores.clip is None else float(scores.clip[row])
            out.append(
                {
                    **record,
                    "concept_score": concept,
                    "clip_score": clip,
                    "scored_as": self.concepts[int(scores.probabilities[row].argmax())],
                    "embedding": scores.features[row].tolist(),
                    "filtered": bool(record["filtered"] or is_low(self.spec, concept, clip)),
                }
            )
        return out
