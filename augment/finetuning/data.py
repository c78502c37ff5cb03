"""What a fine-tune learns from: the real images of each taught concept (checked, squared,
hashed), their captions and tokens, the settings, and prior preservation's class images."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from augment.config import DEFAULT_LEARNING_RATES, FinetuneSpec, JobSpec
from augment.errors import SpecError
from augment.taxonomy import Concept

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainImage:
    """One training image: its concept, caption, pixels (RGB) and where it came from."""

    concept_id: str
    prompt: str
    image: Image.Image
    image_id: str
    sha256: str


@dataclass(frozen=True)
class TaughtConcept:
    """A concept to teach: its learnt token and its real images."""

    id: str
    name: str
    token: str
    images: tuple[TrainImage, ...]


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of `train_adapter`; `settings_for(spec)` fills it from a job spec."""

    method: str
    steps: int
    resolution: int
    learning_rate: float | None = None  # None: the method's default
    seed: int = 0
    rank: int = 4
    train_text_encoder: bool = False
    warmup_steps: int = 0
    random_flip: bool = False
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    prior_weight: float = 1.0
    checkpoint_every: int = 100
    validation_every: int = 0
    validation_images: int = 4
    device: str = "auto"
    # How validation grids are rendered: num_inference_steps, guidance_scale, negative_prompt.
    render: dict = field(default_factory=dict)

    @property
    def lr(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATES[self.method]


def token_for(finetune: FinetuneSpec, concept: Concept) -> str:
    from augment.taxonomy.listfile import slugify

    return finetune.token.format(id=slugify(concept.id), name=slugify(concept.name))


def taught_concepts(finetune: FinetuneSpec, concepts: list[Concept]) -> list[Concept]:
    """The concepts a fine-tune teaches: `finetune.concepts` (ids or names), else all."""
    if finetune.concepts is None:
        return list(concepts)
    from augment.sources import concept_index
    from augment.taxonomy.listfile import slugify

    index = concept_index(concepts)
    chosen = []
    for wanted in finetune.concepts:
        concept = index.get(slugify(wanted))
        if concept is None and slugify(wanted) in index.ambiguous:
            raise SpecError(
                f"finetune.concepts: '{wanted}' names several concepts of the job alike "
                f"({' and '.join(index.ambiguous[slugify(wanted)])}); give its id"
            )
        if concept is None:
            raise SpecError(
                f"finetune.concepts: '{wanted}' is not a concept of the job; concepts: "
                f"{', '.join(c.name for c in concepts[:10])}"
            )
        if concept not in chosen:
            chosen.append(concept)
    return chosen


def tokens_for(spec: JobSpec, concepts: list[Concept]) -> dict[str, str]:
    """Concept id -> the token its prompts use as {token} (only concepts a fine-tune teaches)."""
    if spec.finetune is None:
        return {}
    taught = taught_concepts(spec.finetune, concepts)
    tokens = {c.id: token_for(spec.finetune, c) for c in taught}
    first: dict[str, Concept] = {}
    for concept in taught:  # one token for two concepts: one learnt embedding overwrote the other
        other = first.setdefault(tokens[concept.id], concept)
        if other is not concept:
            raise SpecError(
                f"finetune.token '{spec.finetune.token}' gives '{other.name}' ({other.id}) and "
                f"'{concept.name}' ({concept.id}) one token, {tokens[concept.id]}; give the "
                "concepts ids that differ in more than case and punctuation, or a token that "
                "tells them apart"
            )
    return tokens


def settings_for(spec: JobSpec) -> TrainSettings:
    """The spec's `finetune:` settings (same names), its seed, resolution and device, and how
    its generation section renders (for validation grids)."""
    from dataclasses import fields

    f, g = spec.finetune, spec.generation
    same = {
        k.name: getattr(f, k.name) for k in fields(TrainSettings) if k.name in type(f).model_fields
    }
    return TrainSettings(
        **{
            **same,
            "resolution": f.resolution or g.height,
            "seed": spec.seed if f.seed is None else f.seed,
            "prior_weight": f.prior_preservation.weight if f.prior_preservation else 1.0,
            "device": g.device,
            "render": {
                "num_inference_steps": g.num_inference_steps,
                "guidance_scale": g.guidance_scale,
                "negative_prompt": spec.prompts.negative_prompt if g.guidance_scale > 1 else None,
            },
        }
    )


def square(image: Image.Image, size: int) -> Image.Image:
    """The shorter side scaled to `size` (never up), then the centre `size` x `size`."""
    width, height = image.size
    scale = size / min(width, height)
    if scale != 1:
        image = image.resize(
            (max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC
        )
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def train_image(
    concept_id: str, prompt: str, image: Image.Image, image_id: str, resolution: int
) -> TrainImage:
    """A decoded image checked against the training resolution, squared, and hashed."""
    if min(image.size) < resolution:
        raise SpecError(
            f"finetune: real image {image_id} is {image.width}x{image.height}, smaller than the "
            f"training resolution {resolution}; use larger images or lower finetune.resolution"
        )
    image = square(image.convert("RGB"), resolution)
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    return TrainImage(concept_id, prompt, image, image_id, digest)


def real_images(spec: JobSpec, concepts: list[Concept]) -> list[TaughtConcept]:
    """Each taught concept with its real images, decoded and checked: a concept without one, an
    unreadable file or an image below the resolution is an error naming it."""
    from augment.prompting import concept_values, fill
    from augment.sources import SourceSet, concept_index
    from augment.taxonomy.listfile import slugify

    f = spec.finetune
    sources = SourceSet.at("finetune.source", spec.paths.finetune_source, f.source)
    if sources.unreadable:
        bad = sources.unreadable[0]
        raise SpecError(
            f"finetune.source: image {bad['source']} cannot be read ({bad['error']}); "
            "replace or remove it"
        )
    index = concept_index(concepts)
    by_concept: dict[str, list] = {}
    for source in sources.images:
        label = source.main_label()
        concept = index.get(slugify(label)) if label is not None else None
        if concept is not None:
            by_concept.setdefault(concept.id, []).append(source)
    resolution = settings_for(spec).resolution
    taught = []
    for concept in taught_concepts(f, concepts):
        chosen = by_concept.get(concept.id, [])[: f.images_per_concept]
        if not chosen:
            raise SpecError(
                f"finetune.source: no real image of concept '{concept.name}' in {sources.path} "
                "(images are matched to concepts by their folder, label or category name); add "
                "some, or leave the concept out with finetune.concepts"
            )
        wanted = f.images_per_concept
        if wanted is not None and len(chosen) < wanted:  # few shots: each one counts
            log.warning(
                "finetune: concept %s has %d real image(s) in %s, of the %d that "
                "finetune.images_per_concept asks; training on those",
                concept.name,
                len(chosen),
                sources.path,
                wanted,
            )
        token = token_for(f, concept)
        prompt = fill(f.instance_prompt, {**concept_values(concept, token)})
        images = tuple(
            train_image(concept.id, prompt, sources.pixels(s.id), s.id, resolution) for s in chosen
        )
        taught.append(TaughtConcept(concept.id, concept.name, token, images))
    return taught


def class_image_spec(
    spec: JobSpec, taught: list[TaughtConcept], concepts: list[Concept], folder: Path
) -> JobSpec:
    """Prior preservation's job: `images` renders of the class prompt per taught concept by the
    base model alone, at the training resolution, into `folder` (rendered by the normal engine:
    a rerun reuses what it holds)."""
    from augment.config import GenerationSpec, load_spec, validate_spec

    f, settings = spec.finetune, settings_for(spec)
    wanted = {c.id for c in taught}
    data = spec.model_dump(mode="json")
    data.update(name=f"{spec.name}-class-images", limit=None, source=None, filters={})
    data.pop("finetune")
    data["prompts"].update(
        templates=[f.prior_preservation.prompt],
        images_per_concept=f.prior_preservation.images,
        attributes={},
    )
    data["generation"].update(
        loras=[],
        textual_inversions=[],
        mode="txt2img",
        mask={},  # the job's mode's own settings, which txt2img refuses
        interpolate={},
        strength=GenerationSpec.model_fields["strength"].default,
        controlnet=None,
        height=settings.resolution,
        width=settings.resolution,
    )
    others = [c.id for c in concepts if c.id not in wanted]
    data["taxonomy"]["exclude"] = [*data["taxonomy"]["exclude"], *others]
    data["output"] = {"dir": str(folder), "formats": ["parquet"]}
    class_spec = validate_spec(data, "<class images>")
    class_spec._base_dir = spec._base_dir  # its relative names resolve like the job's
    return load_spec(class_spec)


def read_class_images(folder: Path, resolution: int) -> list[TrainImage]:
    """The class images a `class_image_spec` run rendered, captioned with their prompts."""
    import io

    from augment.sinks.parquet import read_records

    images = []
    for record in read_records(folder / "shards", ["item_id", "concept_id", "prompt", "image"]):
        picture = Image.open(io.BytesIO(record["image"]["bytes"])).convert("RGB")
        images.append(
            train_image(
                record["concept_id"], record["prompt"], picture, record["item_id"], resolution
            )
        )
    return sorted(images, key=lambda i: i.image_id)
