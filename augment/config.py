"""Job specs: the YAML a user writes, validated into a `JobSpec`.

A spec names the concepts, the prompt templates, the model and its render settings (with
diffusers' argument names), and where outputs go. Mistakes are reported with the file, the line
and the dotted key, e.g. ``jobs/x.yaml, line 12: generation.num_inference_steps: must be >= 1,
got 0``; unknown keys suggest the closest valid key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from augment import registry
from augment.errors import SpecError, not_valid_yaml
from augment.prompting import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_NEGATIVE,
    FIELDS,
    check_template,
    placeholders_in,
    template_slots,
)


def _named(name: str) -> str:
    if not name.strip():
        raise ValueError("an empty name: give a file or folder, or leave the key out")
    return name


#: A file or folder the spec names (or a builtin: name, or a hub id): never empty, which
#: would resolve to the job's own folder.
FileName = Annotated[str, AfterValidator(_named)]

#: Scheduler names accepted in job specs, mapped to diffusers classes.
SCHEDULERS = {
    "DDIM": "DDIMScheduler",
    "DDPM": "DDPMScheduler",
    "PNDM": "PNDMScheduler",
    "LMS": "LMSDiscreteScheduler",
    "Euler": "EulerDiscreteScheduler",
    "EulerAncestral": "EulerAncestralDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "DPMSolverMultistep": "DPMSolverMultistepScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "LCM": "LCMScheduler",
}

#: Other names of the schedulers, as the web UIs and diffusers' classes spell them (lower case,
#: without spaces, dashes and underscores): for the "did you mean" of a name augment lacks.
SCHEDULER_ALIASES = {
    "eulera": "EulerAncestral",
    "eulerancestraldiscrete": "EulerAncestral",
    "eulerdiscrete": "Euler",
    "dpm++2m": "DPMSolverMultistep",
    "dpmpp2m": "DPMSolverMultistep",
    "dpmsolver": "DPMSolverMultistep",
    "lmsdiscrete": "LMS",
    **{key.lower(): key for key in SCHEDULERS},
    **{cls.lower().removesuffix("scheduler"): key for key, cls in SCHEDULERS.items()},
}


def scheduler_meant(name: str) -> str | None:
    """The scheduler a name not in SCHEDULERS most likely means ("euler_a": EulerAncestral, a
    diffusers class name, another case), else the closest spelling, else None."""
    folded = re.sub(r"[\s_-]+", "", name.lower()).removesuffix("scheduler")
    if folded in SCHEDULER_ALIASES:
        return SCHEDULER_ALIASES[folded]
    close = difflib.get_close_matches(name, list(SCHEDULERS), n=1, cutoff=0.5)
    return close[0] if close else None


Mode = Literal["txt2img", "img2img", "inpaint", "controlnet", "interpolate"]
#: Modes that start from a source image: their plan is built from `source:` images.
SOURCE_MODES = ("img2img", "inpaint", "controlnet")
#: Settings that only some modes read: a job setting one for another mode is refused, and a
#: record lists them only for those modes.
MODE_SETTINGS = {
    "strength": ("img2img", "inpaint"),
    "mask": ("inpaint",),
    "controlnet": ("controlnet",),
    "interpolate": ("interpolate",),
}
Family = Literal["auto", "sd", "sdxl"]
DType = Literal["float32", "float16", "bfloat16"]
Attention = Literal["sdpa", "flash", "efficient", "cudnn", "math", "eager"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Format = Literal["parquet", "coco", "yolo", "yolo-seg", "imagefolder"]


class StrictModel(BaseModel):
    """Refuses unknown keys so a misspelt setting is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __setattr__(self, name: str, value: Any) -> None:
        """A setting changed in code (a notebook's `spec.generation.steps = ...`) is checked
        like the YAML: a wrong value is the project's one-line SpecError, not pydantic's dump,
        and a `pathlib.Path` is taken where a path goes."""
        if name in type(self).model_fields:  # not a private attribute (a Path stays a Path)
            value = with_plain_paths(value)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise SpecError(f"{name}: {_describe(exc.errors()[0])}") from None


class TaxonomySpec(StrictModel):
    source: str = Field(
        description="Where concepts come from: a list file (a path, or a shipped name: 'digits', "
        "'weeds'), 'wordnet:<synset>', 'coco' or 'coco:<supercategory>'."
    )
    depth: int | None = Field(
        default=None,
        ge=1,
        description="wordnet: keep synsets at most this many hyponym links below the root (by "
        "their shortest path)",
    )
    leaves: bool = Field(default=False, description="wordnet: keep only synsets without hyponyms")
    instances: bool = Field(
        default=False,
        description="wordnet: also keep instance hyponyms, named individuals (Paris below "
        "city.n.01, the Nile below river.n.01); left out by default, as in ImageNet",
    )
    exclude: list[str] = Field(default=[], description="synsets or concept ids to drop")
    max_concepts: int | None = Field(default=None, ge=1)

    @model_serializer(mode="wrap")
    def _instances_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict:
        """`instances: false`, the default, is left out of dumps: every hash of a spec written
        before the setting existed (a run's, its paste's, a fine-tune's folder name) stays as
        it was, and such a run resumes (its adapter is found) instead of starting over."""
        data = handler(self)
        if not self.instances:
            data.pop("instances", None)
        return data


def check_name_prompt(prompt: str) -> str:
    """A detector's or segmenter's text query: only {name} is filled in there."""
    others = [slot for slot in template_slots(prompt) if slot != "name"]
    if others:
        raise ValueError(
            f"unknown placeholder {{{others[0]}}} in {prompt!r}; only {{name}} (the concept's "
            "name) is filled in here"
        )
    return prompt


#: The devices a job or a training may name: torch's own names for them.
DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(device: str) -> str:
    """A torch device name (or auto), refused where it is read: "gpu" failed deep in diffusers
    once the run had written its plan."""
    if not DEVICE_NAME.fullmatch(device):
        raise ValueError(f"{device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return device


class PromptSpec(StrictModel):
    # attributes before templates: the templates' check sees them
    attributes: dict[str, list[str]] = Field(
        default={}, description="values for attribute slots: {viewpoint: [front view, ...]}"
    )
    templates: list[str] = Field(default=["a photo of a {name}"], min_length=1)
    combine: Literal["sample", "exhaustive"] = "sample"
    negative_prompt: str = DEFAULT_NEGATIVE
    images_per_concept: int = Field(default=4, ge=1, le=1_000_000)  # a typo, not a plan
    max_tokens: int = Field(default=77, ge=3, description="the text encoder's context length")
    on_long_prompt: Literal["error", "truncate"] = "error"

    @field_validator("attributes")
    @classmethod
    def _attribute_slots(cls, attributes: dict[str, list[str]]) -> dict[str, list[str]]:
        """A slot a template can name ({0} and {time.of.day} failed as it was filled in), not a
        concept field (it was ignored), and values without placeholders (left in literally)."""
        for slot, values in attributes.items():
            if not slot.isidentifier():
                raise ValueError(
                    f"{slot!r}: an attribute slot is a name of letters, digits and '_' (not "
                    "starting with a digit), as {slot} in a template"
                )
            if slot in FIELDS:
                raise ValueError(f"{slot!r} is a concept field, filled by each concept: rename it")
            for value in values:
                if placeholders_in(value):
                    raise ValueError(
                        f"{slot}: {value!r} holds a placeholder, which attribute values do not "
                        "fill; write it in the template instead"
                    )
        return attributes

    @field_validator("templates")
    @classmethod
    def _templates_known(cls, templates: list[str], info: ValidationInfo) -> list[str]:
        """A blank template or a misspelt placeholder, named at its line in the YAML."""
        slots = set(DEFAULT_ATTRIBUTES) | set(info.data.get("attributes", {}))
        for template in templates:
            if not template.strip():
                raise ValueError("templates must not be empty strings")
            check_template(template, slots)
        return templates

    @field_validator("negative_prompt")
    @classmethod
    def _negative_plain(cls, negative: str) -> str:
        if placeholders_in(negative):  # one text for every image: {name} stayed in literally
            raise ValueError(
                f"{negative!r}: the negative prompt is the same for every image, and its "
                "placeholders are not filled; write it without {...}"
            )
        return negative


class SourceSpec(StrictModel):
    """Real images that img2img, inpaint and controlnet start from."""

    path: FileName = Field(
        description="A COCO folder (annotations.json + images/), an annotations .json file, an "
        "image folder (<class>/<image>), a Parquet file or an augment output folder."
    )
    format: Literal["auto", "coco", "imagefolder", "parquet"] = "auto"
    limit: int | None = Field(default=None, ge=1, description="use the first N source images")


class MaskSpec(StrictModel):
    """Where inpainting masks come from."""

    source: Literal["boxes", "files"] = "boxes"
    per: Literal["object", "class"] = Field(
        default="object", description="boxes: repaint one object per image, or a whole class"
    )
    margin: int = Field(default=4, ge=0, description="boxes: dilate each box by this many pixels")
    files: FileName | None = Field(
        default=None, description="files: a folder of masks named like the source images"
    )


class ControlNetSpec(StrictModel):
    model: FileName = Field(
        description="A ControlNet diffusers folder, hub id in the cache, builtin"
    )
    conditioning: Literal["canny"] = "canny"
    low_threshold: int = Field(default=100, ge=0, le=255)
    high_threshold: int = Field(default=200, ge=0, le=255)
    scale: float = Field(default=1.0, ge=0, description="controlnet_conditioning_scale")


class InterpolateSpec(StrictModel):
    frames: int = Field(default=8, ge=2, le=240, description="frames per sequence, ends included")
    between: Literal["seeds", "prompts", "both"] = Field(
        default="both", description="what changes along a sequence"
    )
    frame_ms: int = Field(default=120, ge=10, description="GIF frame duration")


class LoraSpec(StrictModel):
    path: FileName = Field(description="A folder or .safetensors file of LoRA weights, or builtin")
    weight_name: str | None = None
    scale: float = 1.0


class TextualInversionSpec(StrictModel):
    path: FileName = Field(
        description="An embedding file (.safetensors/.bin) or folder, or builtin"
    )
    token: str = Field(min_length=1, description="the word prompts use, e.g. <my-weed>")


class GenerationSpec(StrictModel):
    model: FileName = Field(
        description="A diffusers folder (DreamBooth output included), a single .safetensors "
        "checkpoint, a hub id already in the local cache, or 'builtin:<name>'."
    )
    family: Family = Field(default="auto", description="sd (1.x/2.x) or sdxl; auto reads it")
    config: FileName | None = Field(
        default=None, description="single-file checkpoints: a diffusers folder with the configs"
    )
    vae: FileName | None = Field(
        default=None,
        description="a VAE replacing the model's own: a diffusers folder (AutoencoderKL, or a "
        "pipeline folder's vae/), a hub id, or one .safetensors file (configured as the "
        "model's vae/), e.g. an fp16-safe SDXL VAE folder, which decodes in float16 where "
        "SDXL's own is upcast to float32",
    )
    mode: Mode = "txt2img"
    scheduler: str = "DDIM"
    num_inference_steps: int = Field(default=30, ge=1, le=1000)
    guidance_scale: float = Field(default=7.5, ge=0, allow_inf_nan=False)
    strength: float = Field(default=0.75, gt=0, le=1, description="img2img and inpaint")
    height: int = Field(default=512, ge=8)
    width: int = Field(default=512, ge=8)
    dtype: DType = "float32"
    device: Annotated[str, AfterValidator(check_device)] = Field(
        default="auto", description="auto (a GPU where there is one), cpu, cuda, cuda:N or mps"
    )
    batch_size: int | Literal["auto"] = Field(
        default=4,
        description="images per pipeline call; auto: the largest that fits the GPU's memory, "
        "probed once per worker (8 on a CPU)",
    )
    mask: MaskSpec = MaskSpec()
    controlnet: ControlNetSpec | None = None
    interpolate: InterpolateSpec = InterpolateSpec()
    loras: list[LoraSpec] = []
    textual_inversions: list[TextualInversionSpec] = []
    safety_checker: bool = Field(
        default=True, description="run the model folder's safety checker, when it has one"
    )
    attention: Attention = Field(
        default="sdpa",
        description="sdpa (PyTorch picks the kernel), one SDPA kernel (flash, efficient, cudnn, "
        "math), or eager (diffusers' own matmul attention)",
    )
    vae_slicing: bool = False
    vae_tiling: bool = False
    channels_last: bool = Field(default=False, description="UNet and VAE in channels-last")
    fuse_qkv: bool = Field(
        default=False, description="fused query-key-value projections in the UNet and VAE"
    )
    cuda_graphs: bool = Field(
        default=True,
        description="GPU runs: replay the UNet's forward as CUDA graphs (the same kernels, "
        "launched at once: same pixels, less time; off with compile, which has its own, and "
        "with batch_size auto, whose memory probe is eager)",
    )
    compile: bool = Field(default=False, description="torch.compile the UNet (GPU runs)")
    compile_vae: bool = Field(
        default=False,
        description="torch.compile the VAE's decoder too (GPU runs; its own default mode: SDXL "
        "moves its VAE to float32 for every decode, which CUDA graphs could not replay)",
    )
    compile_mode: CompileMode = Field(
        default="default",
        description="torch.compile's mode; reduce-overhead replays CUDA graphs (static shapes)",
    )
    compile_cache: str | None = Field(
        default=None,
        description="folder of compiled kernels reused by reruns and every worker of a node "
        "(default: the augment cache's torch-compile/)",
    )
    watermark: bool = Field(
        default=False,
        description="an invisible watermark in every image (the invisible-watermark "
        "package, dwtDctSvd; 256 px or more): `augment inspect` finds it after a JPEG re-encode",
    )
    license: str | None = Field(
        default=None,
        description="the model's licence, recorded with every image (default: the one its "
        "model card's front matter names)",
    )
    encode_threads: int = Field(
        default=2,
        ge=0,
        description="threads that PNG-encode a batch while the next one renders (0: none)",
    )

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        if name not in SCHEDULERS:
            meant = scheduler_meant(name)
            hint = f"did you mean '{meant}'?" if meant else f"known: {', '.join(SCHEDULERS)}"
            raise ValueError(f"unknown scheduler {name!r}; {hint}")
        return name

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, int | str) and not isinstance(value, bool):
            try:
                size = int(value)
            except ValueError:
                size = 0
            if size >= 1:
                return size
        raise ValueError(f"must be a positive integer or auto, got {value!r}")

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, size: int) -> int:
        if size % 8:
            raise ValueError(f"must be a multiple of 8, got {size}")
        return size

    @model_validator(mode="after")
    def _mode_needs(self) -> GenerationSpec:
        if self.mode == "controlnet" and self.controlnet is None:
            raise ValueError("mode controlnet needs a controlnet: section (model: FOLDER)")
        if (
            self.mode in ("img2img", "inpaint")
            and int(self.num_inference_steps * self.strength) < 1
        ):
            raise ValueError(
                f"strength {self.strength} x {self.num_inference_steps} steps leaves no denoising "
                "step; raise num_inference_steps or strength"
            )
        if self.mask.source == "files" and not self.mask.files:
            raise ValueError("mask.source files needs mask.files: a folder of mask images")
        # a setting for another mode was silently ignored (a saved job.yaml holds each at its
        # default, which passes)
        for setting, modes in MODE_SETTINGS.items():
            default = type(self).model_fields[setting].get_default(call_default_factory=True)
            if self.mode not in modes and getattr(self, setting) != default:
                raise ValueError(
                    f"{setting}: only mode{'s' if len(modes) > 1 else ''} {' and '.join(modes)} "
                    f"use{'' if len(modes) > 1 else 's'} it, and this job's mode is {self.mode}; "
                    f"remove {setting}:, or set mode: {modes[0]}"
                )
        if self.fuse_qkv and (self.loras or self.attention == "eager"):
            raise ValueError(
                "fuse_qkv fuses the attention's own projections: it cannot carry loras, nor run "
                "with attention eager; drop fuse_qkv, or fuse the LoRA into a model first"
            )
        if self.watermark and min(self.height, self.width) < 256:
            raise ValueError(
                f"watermark needs images of 256 px or more a side, not {self.width}x"
                f"{self.height}: the watermark's blocks do not fit; raise height and width, or "
                "drop watermark"
            )
        return self


class PriorSpec(StrictModel):
    """DreamBooth's prior preservation: images of the concept's class, rendered by the base
    model through the normal engine (cached beside the adapter), trained alongside."""

    prompt: str = Field(
        default="a photo of a {name}", description="the class prompt; concept fields allowed"
    )
    images: int = Field(default=50, ge=1, description="class images per concept")
    weight: float = Field(default=1.0, gt=0, description="weight of the prior loss")

    @field_validator("prompt")
    @classmethod
    def _prompt_known(cls, prompt: str) -> str:
        check_template(prompt, set(DEFAULT_ATTRIBUTES), hint=f"or {', '.join(DEFAULT_ATTRIBUTES)}")
        return prompt


#: Learning rates that work for each method at batch 1 (diffusers' training examples).
DEFAULT_LEARNING_RATES = {"lora": 1e-4, "textual_inversion": 5e-3, "dreambooth": 5e-6}


class FinetuneSpec(StrictModel):
    """Teach the model the job's concepts from a few real images before rendering them."""

    method: Literal["lora", "textual_inversion", "dreambooth"] = Field(
        description="lora (DreamBooth-LoRA on the UNet attention), textual_inversion (one new "
        "token per concept) or dreambooth (the whole UNet)"
    )
    source: SourceSpec = Field(description="the real images, labelled with concept names or ids")
    concepts: list[str] | None = Field(
        default=None, description="concept ids or names to teach; default: every concept"
    )
    images_per_concept: int | None = Field(
        default=None, ge=1, description="use the first N real images of each concept"
    )
    token: str = Field(
        default="<sks-{id}>", description="the concept's identifier; prompts use it as {token}"
    )
    instance_prompt: str = Field(
        default="a photo of {token} {name}", description="the caption of every real image"
    )
    steps: int = Field(default=400, ge=1, description="optimizer steps")
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        description="default: 1e-4 lora, 5e-3 textual_inversion, 5e-6 dreambooth",
    )
    warmup_steps: int = Field(default=0, ge=0, description="linear warmup, then constant")
    rank: int = Field(default=4, ge=1, description="lora: rank of the update matrices")
    train_text_encoder: bool = Field(
        default=False, description="lora and dreambooth: adapt the text encoder(s) too"
    )
    resolution: int | None = Field(
        default=None, ge=8, description="square training size; default: generation.height"
    )
    random_flip: bool = Field(default=False, description="mirror images at random")
    batch_size: int = Field(default=1, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="no", description="fp16 needs a GPU; weights are kept in float32"
    )
    gradient_checkpointing: bool = False
    prior_preservation: PriorSpec | None = None
    checkpoint_every: int = Field(default=100, ge=1, description="steps between checkpoints")
    validation_every: int = Field(
        default=0, ge=0, description="steps between validation grids; 0: the final grid only"
    )
    validation_images: int = Field(default=4, ge=1, description="images per concept in a grid")
    seed: int | None = Field(default=None, description="default: the job's seed")
    out: FileName | None = Field(
        default=None, description="folder of adapters; default: the cache (AUGMENT_CACHE)"
    )

    @field_validator("resolution")
    @classmethod
    def _resolution_multiple_of_8(cls, size: int | None) -> int | None:
        if size is not None and size % 8:
            raise ValueError(f"must be a multiple of 8, got {size}")
        return size

    @field_validator("concepts")
    @classmethod
    def _concepts_named(cls, concepts: list[str] | None) -> list[str] | None:
        if concepts is not None and not concepts:  # not "every concept", which the key's absence is
            raise ValueError(
                "the list is empty, so no concept would be taught; name the concepts to teach "
                "(ids or names, e.g. [nine]), or remove the key to teach every concept"
            )
        return concepts

    @field_validator("instance_prompt")
    @classmethod
    def _instance_prompt_known(cls, prompt: str, info: ValidationInfo) -> str:
        """A known caption; textual inversion trains nothing but the token's vector, so its
        caption must hold {token} (without it no gradient reaches what trains)."""
        check_template(prompt, set(), hint="")  # the caption of a real image: no attributes
        if info.data.get("method") == "textual_inversion" and "token" not in template_slots(prompt):
            raise ValueError(
                f"must contain {{token}} ({prompt!r} has none): textual_inversion learns only "
                "the token's embedding, so a caption without it teaches nothing; write e.g. "
                "'a photo of {token} {name}'"
            )
        return prompt

    @field_validator("token")
    @classmethod
    def _token_names_concept(cls, token: str) -> str:
        if "{id}" not in token and "{name}" not in token:
            raise ValueError(
                f"{token!r} would give every concept the same token; put {{id}} or {{name}} in it"
            )
        if any(ch.isspace() for ch in token):
            raise ValueError(f"{token!r} must be one word (no spaces)")
        return token


class FilterSpec(StrictModel):
    """Score every generated image and flag the ones that do not show their concept."""

    scorer: FileName | None = Field(
        default=None,
        description="A CLIP model (folder or hub id in the cache: zero-shot over the job's "
        "concepts) or an augment image classifier folder (builtin:digits-scorer); none: no "
        "filtering.",
    )
    min_concept_score: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="flag an image whose own concept gets a lower probability among the job's "
        "concepts (0.5: the scorer agrees with its label)",
    )
    min_clip_score: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="CLIP scorers: flag an image whose CLIP score (100 x cosine with its "
        "prompt) is lower",
    )

    @model_validator(mode="after")
    def _minimums_need_a_scorer(self) -> FilterSpec:
        # without a scorer nothing is scored, so a minimum the user chose flagged nothing, in
        # silence; the defaults pass (a saved job.yaml holds them, scorer or not)
        if self.scorer is not None:
            return self
        for setting in ("min_concept_score", "min_clip_score"):
            value = getattr(self, setting)
            if value not in (0, type(self).model_fields[setting].default):
                raise ValueError(
                    f"{setting} {value:g} needs a scorer, and none is set (nothing would be "
                    "scored, so nothing flagged); add scorer: (a CLIP model, or an augment "
                    f"classifier such as builtin:digits-scorer), or remove {setting}"
                )
        return self


class SegmentSpec(StrictModel):
    """A foreground mask and a tight box for the object each rendered image shows."""

    method: Literal["threshold", "clipseg", "sam"] = Field(
        default="threshold",
        description="threshold: pixels that differ from the background (plain or white "
        "backgrounds, e.g. prompts '... isolated on a white background'); clipseg: CLIPSeg "
        "prompted with the concept name; sam: SAM prompted with the labels: detector's best box "
        "of the image's concept, else the threshold mask's box",
    )
    model: FileName | None = Field(
        default=None,
        description="clipseg and sam: a transformers model folder, or a hub id already in the "
        "local cache (CIDAS/clipseg-rd64-refined, facebook/sam-vit-base)",
    )
    threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="threshold: grey levels a foreground pixel differs from the background by "
        "(0 to below 255, default 40); clipseg: the probability a foreground pixel reaches "
        "(0 to 1, default 0.4); sam: the mask logit a foreground pixel exceeds (any number, "
        "default 0: probability 0.5; lower keeps more pixels)",
    )
    prompt: Annotated[str, AfterValidator(check_name_prompt)] = Field(
        default="{name}", description="clipseg: the text it is prompted with ({name}: concept)"
    )
    min_area: float = Field(
        default=0.002, ge=0, le=1, description="flag a mask covering less of the image"
    )
    max_area: float = Field(
        default=0.9, ge=0, le=1, description="flag a mask covering more of the image"
    )
    max_border: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="flag a mask covering more of the image's border pixels (a cut-off object, "
        "or a background taken for the object)",
    )

    @model_validator(mode="after")
    def _model_for_learnt_methods(self) -> SegmentSpec:
        if self.method != "threshold" and self.model is None:
            raise ValueError(f"segment.method {self.method} needs segment.model (a folder)")
        if self.method == "threshold" and self.model is not None:
            raise ValueError("segment.method threshold uses no model: remove segment.model")
        if self.min_area >= self.max_area:  # every mask would be flagged
            raise ValueError(
                f"segment.min_area {self.min_area:g} is not below max_area {self.max_area:g}: "
                "no mask could pass both"
            )
        self._threshold_in_range()
        return self

    def _threshold_in_range(self) -> None:
        """Each method reads `threshold` in its own unit; a value outside that unit's range
        would flag every image bad_mask without a word."""
        value = self.threshold
        if value is None:
            return
        if self.method == "threshold" and not 0 <= value < 255:
            raise ValueError(
                f"segment.threshold {value:g}: the threshold method keeps pixels that differ "
                "from the background by more than this many grey levels (0-255): give 0 to 254 "
                "(default 40)"
            )
        if self.method == "clipseg" and not 0 <= value <= 1:
            raise ValueError(
                f"segment.threshold {value:g}: clipseg's is a probability (0 to 1, "
                "default 0.4); grey levels are the threshold method's"
            )


class LabelSpec(StrictModel):
    """Open-vocabulary auto-labels: a zero-shot detector boxes each rendered image."""

    detector: FileName = Field(
        description="An OWLv2, OWL-ViT or Grounding DINO transformers folder, or a hub id "
        "already in the local cache (google/owlv2-base-patch16-ensemble, "
        "IDEA-Research/grounding-dino-tiny)"
    )
    threshold: float = Field(
        default=0.1, ge=0, le=1, description="keep boxes whose score reaches this"
    )
    concepts: Literal["own", "all"] = Field(
        default="own",
        description="own: look for the concept the image was rendered for; all: for every "
        "concept of the job",
    )
    prompt: Annotated[str, AfterValidator(check_name_prompt)] = Field(
        default="a photo of a {name}", description="the text query per concept"
    )
    nms_iou: float = Field(
        default=0.5, gt=0, le=1, description="of two boxes of a concept overlapping more, keep one"
    )


#: The most instances `paste:` places on one background (each takes up to 20 tries).
MAX_INSTANCES = 100


class PasteSpec(StrictModel):
    """Copy-paste: the job's segmented renders pasted onto real background images (OUT/paste)."""

    backgrounds: SourceSpec = Field(
        description="Real background images: a COCO folder, an image folder, a Parquet file or "
        "an augment output; their own boxes are kept"
    )
    images_per_background: int = Field(default=1, ge=1)
    instances: tuple[int, int] = Field(
        default=(1, 3), description="[min, max] instances pasted onto each image"
    )
    scale: tuple[float, float] = Field(
        default=(0.2, 0.5),
        description="[min, max] longer side of a pasted instance, as a share of the "
        "background's shorter side",
    )
    flip: bool = Field(default=True, description="mirror half of the instances")
    max_overlap: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="the share of a pasted box that may cover a box already there (the "
        "background's own, or an instance pasted before it); an instance that finds no such "
        "place in 20 tries is left out",
    )
    blend: Literal["hard", "gaussian"] = Field(
        default="gaussian", description="hard: the mask as is; gaussian: its edge feathered"
    )
    feather: float = Field(default=1.0, ge=0, description="gaussian: the blur's sigma, pixels")

    @field_validator("instances")
    @classmethod
    def _instance_counts(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1] <= MAX_INSTANCES:  # a billion hung the first canvas
            raise ValueError(
                f"must be [min, max] with 1 <= min <= max <= {MAX_INSTANCES}, got {list(value)}"
            )
        return value

    @model_validator(mode="after")
    def _feathered(self) -> PasteSpec:
        if self.blend == "gaussian" and self.feather == 0:
            raise ValueError(
                "feather: blend gaussian blurs the edge by feather pixels; give it "
                "above 0, or set blend: hard"
            )
        return self

    @field_validator("scale")
    @classmethod
    def _scales(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"must be [min, max] with 0 < min <= max <= 1, got {list(value)}")
        return value


class OutputSpec(StrictModel):
    dir: str = "out"
    formats: list[Format] = ["parquet", "coco"]
    rows_per_shard: int = Field(default=100, ge=1, description="images per Parquet shard")


class JobSpec(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    taxonomy: TaxonomySpec
    prompts: PromptSpec = PromptSpec()
    generation: GenerationSpec
    source: SourceSpec | None = None
    filters: FilterSpec = FilterSpec()
    labels: LabelSpec | None = None
    segment: SegmentSpec | None = None
    paste: PasteSpec | None = None
    finetune: FinetuneSpec | None = None
    output: OutputSpec = OutputSpec()
    limit: int | None = Field(default=None, ge=1, description="Render at most this many items.")
    _base_dir: Path | None = PrivateAttr(default=None)  # relative file names start here
    _file: Path | None = PrivateAttr(default=None)  # the job file it was read from
    _paths: SpecPaths | None = PrivateAttr(default=None)

    @property
    def job_file(self) -> Path | None:
        """The job file this spec was read from (None: a dict or a JobSpec made in code)."""
        return self._file

    @property
    def paths(self) -> SpecPaths:
        """Where the files this spec names are (resolved by `load_spec`; else from the cwd)."""
        if self._paths is None:
            self._paths = resolve_paths(self, self._base_dir)
        return self._paths

    @field_validator("finetune")
    @classmethod
    def _token_learnt_where_rendered(
        cls, finetune: FinetuneSpec | None, info: ValidationInfo
    ) -> FinetuneSpec | None:
        """{token} in the templates is what the fine-tune learnt only when its caption holds it
        too; textual inversion's learnt vectors are reached through {token} alone, so without
        it in a template the fine-tune would change no image. (LoRA and DreamBooth change the
        weights every prompt goes through: `augment finetune` warns then, see `job.finetune`.)"""
        prompts = info.data.get("prompts")
        if finetune is None or prompts is None:  # prompts: refused already, with its own error
            return finetune
        rendered = any("token" in template_slots(t) for t in prompts.templates)
        learnt = "token" in template_slots(finetune.instance_prompt)
        if rendered and not learnt:
            raise ValueError(
                "prompts.templates use {token}, but finetune.instance_prompt "
                f"{finetune.instance_prompt!r} does not, so the {finetune.method} fine-tune never "
                "learns it: "
                "put {token} in the instance prompt ('a photo of {token} {name}'), or take it "
                "out of the templates to teach each concept under its name"
            )
        if not rendered and finetune.method == "textual_inversion":
            raise ValueError(
                "no template of prompts.templates names {token}, the word textual_inversion "
                "learns, so the fine-tune would change no image: put it in a template ('a photo "
                "of {token} {name}')"
            )
        return finetune

    @model_validator(mode="after")
    def _source_for_source_modes(self) -> JobSpec:
        mode = self.generation.mode
        if mode in SOURCE_MODES and self.source is None:
            raise ValueError(f"mode {mode} starts from real images: add a source: section")
        if mode not in SOURCE_MODES and self.source is not None:
            raise ValueError(f"mode {mode} does not use source images: remove source:")
        if self.paste is not None and self.segment is None:
            raise ValueError(
                "paste: pastes the masks of the job's renders; add a segment: section "
                "(e.g. segment: {method: threshold})"
            )
        if mode in SOURCE_MODES and self.labels is not None:
            raise ValueError(
                f"labels: boxes rendered scenes; mode {mode} keeps its source's boxes: remove "
                "labels:"
            )
        if mode in SOURCE_MODES and self.segment is not None:
            raise ValueError(
                f"segment: masks the one object a rendered image shows; mode {mode} keeps its "
                "source's boxes: remove segment:"
            )
        return self

    def spec_hash(self) -> str:
        """Hash of everything that decides which images a run makes (not where they go, how
        the machine makes them, nor what `paste:` makes of them in OUT/paste: that has
        `paste_hash`). A run resumed with CUDA graphs off or other encoding threads is the
        same run."""
        content = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    def identity(self) -> dict:
        """What `spec_hash` hashes: the spec less where the run goes (output.dir and the
        export formats, which a resumed run writes anew), its limit, `paste:` and the machine's
        settings."""
        return self.model_dump(
            mode="json",
            exclude={
                "output": {"dir", "formats"},
                "limit": True,
                "paste": True,
                "generation": set(EXECUTION_SETTINGS),
            },
        )

    def paste_hash(self) -> str:
        """Hash of what decides OUT/paste's images: the renders (`spec_hash`) and `paste:`."""
        content = [self.spec_hash(), self.paste.model_dump(mode="json") if self.paste else None]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def finetune_hash(self, base_dir: Path | None = None) -> str:
        """Hash of everything that decides a fine-tune's weights, and nothing else: not the
        step count (a longer run resumes a shorter one), not the checkpoint or validation
        cadence, not where adapters go. The real images are checked against the adapter's card
        when it is used, so an edited folder is noticed without reading images here. A relative
        source path is taken where it leads (from `base_dir`, the job's folder): two projects'
        jobs of one name, each with its own `real/`, shared one adapter, and each was told its
        images had changed (`--force`, which deleted the other's)."""
        f = self.finetune
        if f is None:
            return ""
        g = self.generation
        tuned = f.model_dump(
            mode="json",
            exclude={"steps", "checkpoint_every", "validation_every", "validation_images", "out"},
        )
        source = Path(f.source.path).expanduser()
        if ":" not in f.source.path and not source.is_absolute():  # builtin: names stay names
            tuned["source"]["path"] = str(((base_dir or Path.cwd()) / source).absolute())
        content = {
            "finetune": tuned,
            "seed": self.seed if f.seed is None else f.seed,
            "resolution": f.resolution or g.height,
            "model": [g.model, g.config, g.family],
            "taxonomy": self.taxonomy.model_dump(mode="json"),
        }
        if f.prior_preservation is not None:  # class images are rendered with these settings
            content["render"] = g.model_dump(mode="json", exclude={"loras", "textual_inversions"})
            content["negative_prompt"] = self.prompts.negative_prompt
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_output_dir(self, out: str | Path) -> JobSpec:
        """The same spec writing to `out` (its resolved paths kept)."""
        return self.model_copy(update={"output": self.output.model_copy(update={"dir": str(out)})})


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every key, to point errors at it."""


def _key_lines(root: yaml.Node) -> dict[tuple, int]:
    """Map each key path (tuple of keys and list indices) to its 1-based line number."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    walk(root, ())
    return lines


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The spec model inside an annotation: X, X | None or list[X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(path: tuple) -> list[str]:
    """Valid key names of the model found at `path` inside JobSpec."""
    model: type[BaseModel] = JobSpec
    for part in path:
        if isinstance(part, int):  # an index into a list of models
            continue
        field = model.model_fields.get(str(part))
        found = _model_in(field.annotation) if field else None
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as a short sentence a person can act on."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    path = error["loc"]
    if kind == "extra_forbidden":
        valid = _fields_at(path[:-1])
        close = difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return f"unknown key '{path[-1]}'; {hint}"
    if kind == "missing":
        return "required key is missing"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "string_pattern_mismatch":  # the job's name: it names files and folders
        return (
            f"letters, digits, '_', '.' and '-' only, starting with a letter or digit, "
            f"got {value!r}"
        )
    message = error["msg"].rstrip(".")
    return f"{message[:1].lower()}{message[1:]}, got {value!r}"


def _format_location(source: str, lines: dict[tuple, int], path: tuple) -> str:
    """'file, line N: a.b.c' for the deepest part of `path` that the YAML holds."""
    dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path)
    dotted = dotted.replace(".[", "[")
    if not path:  # a check across sections: point at the mode, which decides it
        path, dotted = ("generation", "mode"), "generation.mode"
    for depth in range(len(path), -1, -1):
        if path[:depth] in lines:
            return f"{source}, line {lines[path[:depth]]}: {dotted}"
    return f"{source}: {dotted}"


#: A spec is small: more YAML nodes than this (aliases counted as often as they are used) is
#: a file that would take minutes to validate, not a job.
MAX_SPEC_NODES = 100_000


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document with every alias expanded, counted without expanding (memoised),
    stopping early past `limit`."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if children_done:
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def repeated_key(root: yaml.Node) -> tuple[str, int, int] | None:
    """The first key a mapping sets twice: (key, its first line, the repeat's line)."""
    stack = [root]
    seen_nodes: set[int] = set()  # an alias shares its anchor's node
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    line = key_node.start_mark.line + 1
                    if key_node.value in lines:
                        return key_node.value, lines[key_node.value], line
                    lines[key_node.value] = line
                stack.append(value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return None


def read_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The YAML document and its node tree; bounded in time and memory whatever the text."""
    loader = _LineLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        size = expanded_size(root, MAX_SPEC_NODES)
        if size > MAX_SPEC_NODES:
            raise SpecError(
                f"{source}: the YAML expands to more than {MAX_SPEC_NODES:,} values (anchors and "
                "aliases nested in each other); write the spec out plainly"
            )
        repeated = repeated_key(root)
        if repeated is not None:
            key, first, again = repeated
            raise SpecError(
                f"{source}, line {again}: '{key}' is set twice (line {first} too), and YAML would "
                "keep only the last; remove one"
            )
        return loader.construct_document(root), root
    except yaml.YAMLError as exc:
        raise SpecError(not_valid_yaml(source, exc)) from exc
    except RecursionError:
        raise SpecError(f"{source}: the YAML is nested too deeply to be a job spec") from None
    finally:
        loader.dispose()


def with_plain_paths(value):
    """A dict built in code may name files with `pathlib.Path`s, where YAML gives strings."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {key: with_plain_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [with_plain_paths(item) for item in value]
    return value


def parse_spec(text: str, source: str = "<spec>") -> JobSpec:
    """Validate YAML text into a JobSpec; raises SpecError naming file, line and key."""
    data, root = read_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a YAML mapping (name:, taxonomy:, ...)")
    return validate_spec(data, source, root)


def validate_spec(data: dict, source: str, root: yaml.Node | None = None) -> JobSpec:
    """A dict (from YAML or built in code) as a JobSpec; SpecError names the key (and line)."""
    try:
        return JobSpec.model_validate(with_plain_paths(data))
    except ValidationError as exc:
        lines = _key_lines(root) if root is not None else {}
        # A misspelt key also makes the right one "missing": report the misspelling first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        message = f"{_format_location(source, lines, first['loc'])}: {_describe(first)}"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise SpecError(message) from exc


def load_spec(
    spec: str | Path | dict | JobSpec,
    overrides: dict[str, Any] | None = None,
    base_dir: Path | None = None,
    name: str = "<spec>",
) -> JobSpec:
    """A job spec from a YAML file, a dict (notebooks) or a JobSpec, with dotted overrides
    ({'seed': 3, 'output.dir': 'x'}) applied; every file it names is resolved once, here:
    relative to the job file's folder (a dict: to `base_dir`, else the working directory).
    `name`: what messages call a dict or JobSpec (a file is called by its path)."""
    job_file = None
    if isinstance(spec, JobSpec):
        parsed, source, base_dir, job_file = spec, name, spec._base_dir, spec._file
    elif isinstance(spec, dict):
        parsed, source = validate_spec(spec, name), name
    elif not isinstance(spec, str | Path):
        raise SpecError(
            f"a job spec is a YAML file's path, a dict or a JobSpec, not {type(spec).__name__}"
        )
    else:
        path = Path(spec)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise SpecError(f"{path}: job file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text file"
            raise SpecError(f"{path}: cannot read job file: {reason}") from None
        parsed, source, base_dir = parse_spec(text, str(path)), str(path), path.parent.absolute()
        job_file = path.absolute()
    resolved = apply_overrides(parsed, overrides or {}, source)
    resolved._base_dir = base_dir
    resolved._file = job_file
    resolved._paths = resolve_paths(resolved, base_dir)
    return resolved


def apply_overrides(spec: JobSpec, overrides: dict[str, Any], source: str) -> JobSpec:
    """Return a copy of `spec` with dotted keys replaced, validated like the YAML was."""
    if not isinstance(overrides, dict):
        raise SpecError(
            f"{source}: overrides are a dict of dotted keys, such as {{'seed': 3, 'output.dir': "
            f"'out/x'}}, not a {type(overrides).__name__}"
        )
    data = spec.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    try:
        return JobSpec.model_validate(with_plain_paths(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        dotted = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{source}: {dotted} (an override): {_describe(first)}") from exc


#: Generation settings that change how a machine renders, never the images (CUDA graphs
#: replay the very kernels eager runs; threads only encode PNGs; a folder only caches).
EXECUTION_SETTINGS = ("cuda_graphs", "encode_threads", "compile_cache")


@dataclass(frozen=True)
class SpecPaths:
    """Where each file a spec names is, resolved once when the spec is loaded.

    Local files are absolute paths; builtins are the paths their builders return; hub ids stay
    hub ids. A file that is not there keeps the absolute path it would have, so the stage that
    needs it says so, naming the spec key: a spec for another machine still loads and plans.
    """

    model: str
    config: str | None = None
    vae: str | None = None
    controlnet: str | None = None
    loras: tuple[str, ...] = ()
    textual_inversions: tuple[str, ...] = ()
    mask_files: str | None = None
    scorer: str | None = None
    segmenter: str | None = None
    detector: str | None = None  # labels.detector
    backgrounds: str | None = None  # paste.backgrounds.path
    source: str | None = None
    taxonomy: str = ""  # a list file's absolute path, or the wordnet:/coco source itself
    finetune_source: str | None = None
    finetuned: str | None = None  # the adapter folder a `finetune:` section trains and uses


def locate(name: str, base_dir: Path | None, key: str, kind: registry.Kind = "model") -> str:
    """A file name from the spec as something a loader can open: see `SpecPaths`."""
    if name.startswith("builtin:"):
        return str(registry.resolve(kind, name, key).resolve())
    candidates = [Path(name).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.insert(0, base_dir / name)  # the job's folder first, as for list files
    for candidate in candidates:
        if candidate.exists():
            return str(candidate.resolve())
    if looks_like_hub_id(name):
        return name
    return str(candidates[0].resolve())  # where the job's folder would have it


def looks_like_hub_id(name: str) -> bool:
    """'owner/name', not a relative or absolute path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def resolve_paths(spec: JobSpec, base_dir: Path | None) -> SpecPaths:
    """Resolve every file name of `spec` (relative ones against `base_dir`, else the cwd)."""
    from augment.taxonomy import resolve_list_file

    g = spec.generation
    taxonomy = spec.taxonomy.source
    if taxonomy.partition(":")[0] not in ("wordnet", "coco"):
        taxonomy = str(resolve_list_file(taxonomy, base_dir).resolve())
    mask_files = None
    if g.mask.files is not None:
        mask_files = locate(g.mask.files, base_dir, "generation.mask.files")
    return SpecPaths(
        model=locate(g.model, base_dir, "generation.model"),
        config=locate(g.config, base_dir, "generation.config") if g.config else None,
        vae=locate(g.vae, base_dir, "generation.vae") if g.vae else None,
        controlnet=locate(g.controlnet.model, base_dir, "generation.controlnet.model")
        if g.controlnet is not None
        else None,
        loras=tuple(
            locate(lora.path, base_dir, f"generation.loras[{n}].path")
            for n, lora in enumerate(g.loras)
        ),
        textual_inversions=tuple(
            locate(ti.path, base_dir, f"generation.textual_inversions[{n}].path")
            for n, ti in enumerate(g.textual_inversions)
        ),
        mask_files=mask_files,
        scorer=locate(spec.filters.scorer, base_dir, "filters.scorer")
        if spec.filters.scorer
        else None,
        detector=locate(spec.labels.detector, base_dir, "labels.detector") if spec.labels else None,
        segmenter=locate(spec.segment.model, base_dir, "segment.model")
        if spec.segment and spec.segment.model
        else None,
        backgrounds=locate(
            spec.paste.backgrounds.path, base_dir, "paste.backgrounds.path", "source"
        )
        if spec.paste
        else None,
        source=locate(spec.source.path, base_dir, "source.path", "source") if spec.source else None,
        taxonomy=taxonomy,
        finetune_source=locate(
            spec.finetune.source.path, base_dir, "finetune.source.path", "source"
        )
        if spec.finetune
        else None,
        finetuned=str(adapter_folder(spec, base_dir)) if spec.finetune else None,
    )


def adapter_folder(spec: JobSpec, base_dir: Path | None) -> Path:
    """Where the job's fine-tune lives: `finetune.out` (else the cache's adapters/), then a
    folder named after the job and its `finetune_hash`."""
    from augment.cache import cache_dir

    root = cache_dir() / "adapters"
    if spec.finetune.out is not None:
        root = Path(spec.finetune.out).expanduser()
        if not root.is_absolute():
            root = (base_dir or Path.cwd()) / root
    # the name cut: a 260-character job name made a folder name the file system refused; the
    # hash keeps folders apart
    return root.absolute() / f"{spec.name[:100]}-{spec.finetune_hash(base_dir)}"
