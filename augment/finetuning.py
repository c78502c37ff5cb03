"""Teach the generator a concept from a few real images: LoRA, textual inversion, DreamBooth.

real images of each concept (`finetune.source`) -> captions ("a photo of <sks-id> name") ->
training on the base model, seeded, checkpointed, resumable -> an adapter folder that generation
loads: `pytorch_lora_weights.safetensors` (lora, diffusers' format), one embedding file per
token (textual_inversion; SDXL: clip_l and clip_g) or a whole diffusers pipeline (dreambooth).
Its card (README.md, finetune.json, loss.png, samples.png) names the base model, the method, the
concepts, and the id and SHA-256 of every real image used.

Every random draw of step k comes from a generator seeded by (seed, k), so a run resumed from the
checkpoint of step k ends with the same weights as one that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from augment.config import DEFAULT_LEARNING_RATES, FinetuneSpec, JobSpec
from augment.errors import AugmentError, SpecError, first_line
from augment.generate.pipelines import ADAPTER_CARD as CARD
from augment.generate.pipelines import read_adapter_card
from augment.taxonomy import Concept

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
#: Attention projections adapted: the UNet's (as diffusers' scripts) and CLIP's.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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


@dataclass
class FinetuneResult:
    folder: Path
    method: str
    family: str
    tokens: dict[str, str]  # concept id -> token
    steps: int
    trained: bool  # False: an adapter already complete was reused
    card: dict


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
    return {c.id: token_for(spec.finetune, c) for c in taught_concepts(spec.finetune, concepts)}


def settings_for(spec: JobSpec) -> TrainSettings:
    f, g = spec.finetune, spec.generation
    return TrainSettings(
        method=f.method,
        steps=f.steps,
        resolution=f.resolution or g.height,
        learning_rate=f.learning_rate,
        seed=spec.seed if f.seed is None else f.seed,
        rank=f.rank,
        train_text_encoder=f.train_text_encoder,
        warmup_steps=f.warmup_steps,
        random_flip=f.random_flip,
        batch_size=f.batch_size,
        gradient_accumulation_steps=f.gradient_accumulation_steps,
        mixed_precision=f.mixed_precision,
        gradient_checkpointing=f.gradient_checkpointing,
        prior_weight=f.prior_preservation.weight if f.prior_preservation else 1.0,
        checkpoint_every=f.checkpoint_every,
        validation_every=f.validation_every,
        validation_images=f.validation_images,
        device=g.device,
        render={
            "num_inference_steps": g.num_inference_steps,
            "guidance_scale": g.guidance_scale,
            "negative_prompt": spec.prompts.negative_prompt if g.guidance_scale > 1 else None,
        },
    )


# ---------------------------------------------------------------------------------------------
# Real images


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
    from augment.prompting import FIELDS, concept_values, fill, template_slots
    from augment.sources import SourceSet, concept_index
    from augment.taxonomy.listfile import slugify

    f = spec.finetune
    path = Path(spec.paths.finetune_source)
    if not path.exists():
        raise SpecError(
            f"finetune.source.path: '{f.source.path}' not found (no {path}); give an image folder "
            "(<concept>/<image>), a COCO folder, a Parquet file or an augment output"
        )
    try:
        sources = SourceSet(path, f.source.format, f.source.limit)
    except SpecError as exc:
        raise SpecError(str(exc).replace("source.path", "finetune.source.path", 1)) from None
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
    for slot in template_slots(f.instance_prompt):
        if slot not in FIELDS:
            raise SpecError(
                f"finetune.instance_prompt: unknown placeholder {{{slot}}}; use concept fields: "
                f"{', '.join('{' + name + '}' for name in FIELDS)}"
            )
    resolution = settings_for(spec).resolution
    taught = []
    for concept in taught_concepts(f, concepts):
        chosen = by_concept.get(concept.id, [])[: f.images_per_concept]
        if not chosen:
            raise SpecError(
                f"finetune.source: no real image of concept '{concept.name}' in {path} (images "
                f"are matched to concepts by their folder, label or category name); add some, "
                "or leave the concept out with finetune.concepts"
            )
        token = token_for(f, concept)
        prompt = fill(f.instance_prompt, {**concept_values(concept, token)})
        images = tuple(
            train_image(concept.id, prompt, sources.pixels(s.id), s.id, resolution) for s in chosen
        )
        taught.append(TaughtConcept(concept.id, concept.name, token, images))
    return taught


# ---------------------------------------------------------------------------------------------
# Training


def _stream(seed: int, step: int, micro: int) -> int:
    """The seed of step `step`'s draws: a function of (seed, step), so resuming is exact."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def check_precision(mixed_precision: str, device: str) -> None:
    if mixed_precision == "fp16" and not device.startswith("cuda"):
        raise AugmentError(
            f"finetune.mixed_precision: fp16 needs a GPU (device is {device}); use 'no' or bf16"
        )


def _to_tensor(images: list[Image.Image]):
    import torch

    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


class TokenEmbeddings:
    """Textual inversion: new tokens in a tokenizer, their vectors a small trainable matrix.

    A forward hook on the text encoder's token embedding swaps in the trainable rows wherever a
    new token appears, so nothing else of the (frozen) vocabulary can move."""

    def __init__(self, tokenizer, text_encoder, tokens: list[str], names: list[str]):
        import torch

        for token in tokens:
            if token in tokenizer.get_vocab() or len(tokenizer.tokenize(token)) == 1:
                raise SpecError(
                    f"finetune.token: '{token}' is already a word of the model's tokenizer; "
                    "textual inversion needs a new one, e.g. <sks-{id}>"
                )
        self.first = len(tokenizer)
        tokenizer.add_tokens(tokens)
        text_encoder.resize_token_embeddings(len(tokenizer))
        table = text_encoder.get_input_embeddings().weight
        rows = []
        for name in names:  # start from the concept's own words
            ids = tokenizer(name, add_special_tokens=False).input_ids or [tokenizer.eos_token_id]
            rows.append(table[ids].detach().mean(0))
        self.vectors = torch.nn.Parameter(torch.stack(rows).clone())
        self.tokens = tokens
        text_encoder.get_input_embeddings().register_forward_hook(self._swap)

    def _swap(self, module, inputs, output):
        import torch

        ids = inputs[0]
        new = ids >= self.first
        if not bool(new.any()):
            return output
        rows = self.vectors[(ids - self.first).clamp(min=0)].to(output.dtype)
        return torch.where(new.unsqueeze(-1), rows, output)


class Trainer:
    """The state of one fine-tune: the pipeline, what trains, the optimizer, the cached latents."""

    def __init__(self, pipe, concepts: list[TaughtConcept], settings: TrainSettings, prior=()):
        import torch

        self.pipe, self.settings, self.concepts = pipe, settings, concepts
        self.family = pipe.family
        self.device = pipe.device
        self.sdxl = self.family == "sdxl"
        self.encoders = [
            (name, getattr(pipe, name), getattr(pipe, tok))
            for name, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
            if getattr(pipe, name, None) is not None
        ]
        from diffusers import DDPMScheduler

        self.noise = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (pipe.unet, pipe.vae, *(enc for _, enc, _ in self.encoders)):
            module.requires_grad_(False)
        self.inversions = self._make_trainable()
        self.params = {
            f"{part}.{name}": p
            for part, module in (("unet", pipe.unet), *((n, e) for n, e, _ in self.encoders))
            for name, p in module.named_parameters()
            if p.requires_grad
        }
        for number, inversion in enumerate(self.inversions):
            self.params[f"inversion{number}"] = inversion.vectors
        if settings.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            if self.text_trains:
                for _, encoder, _ in self.encoders:
                    encoder.gradient_checkpointing_enable()
        decay = 0.0 if settings.method == "textual_inversion" else 1e-2
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=settings.lr, weight_decay=decay
        )
        self.scaler = torch.amp.GradScaler("cuda") if settings.mixed_precision == "fp16" else None
        self.images = [image for concept in concepts for image in concept.images]
        self.prior = list(prior)
        self.means, self.stds = self._encode_images(self.images)
        if self.prior:
            self.prior_means, self.prior_stds = self._encode_images(self.prior)
        self._fixed_text: dict[str, tuple] = {}

    @property
    def text_trains(self) -> bool:
        s = self.settings
        return s.method == "textual_inversion" or s.train_text_encoder

    def _make_trainable(self) -> list[TokenEmbeddings]:
        from peft import LoraConfig

        s, pipe = self.settings, self.pipe
        if s.method == "textual_inversion":
            tokens = [c.token for c in self.concepts]
            names = [c.name for c in self.concepts]
            return [TokenEmbeddings(tok, enc, tokens, names) for _, enc, tok in self.encoders]
        if s.method == "lora":
            pipe.unet.add_adapter(
                LoraConfig(
                    r=s.rank,
                    lora_alpha=s.rank,
                    init_lora_weights="gaussian",
                    target_modules=UNET_TARGETS,
                )
            )
            if s.train_text_encoder:
                for _, encoder, _ in self.encoders:
                    encoder.add_adapter(
                        LoraConfig(
                            r=s.rank,
                            lora_alpha=s.rank,
                            init_lora_weights="gaussian",
                            target_modules=TEXT_TARGETS,
                        )
                    )
            return []
        pipe.unet.requires_grad_(True)  # dreambooth
        if s.train_text_encoder:
            for _, encoder, _ in self.encoders:
                encoder.requires_grad_(True)
        return []

    def _encode_images(self, images: list[TrainImage]):
        """Latent means and stds of each image (and its mirror, random_flip): N x F x C x h x w."""
        import torch

        views = [[image.image] for image in images]
        if self.settings.random_flip:
            views = [[v[0], v[0].transpose(Image.FLIP_LEFT_RIGHT)] for v in views]
        flat = [view for group in views for view in group]
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(flat), 8):
                pixels = _to_tensor(flat[start : start + 8]).to(self.device, self.pipe.vae.dtype)
                dist = self.pipe.vae.encode(pixels).latent_dist
                means.append(dist.mean.float().cpu())
                stds.append(dist.std.float().cpu())
        per = len(views[0])
        mean, std = torch.cat(means), torch.cat(stds)
        return mean.reshape(len(images), per, *mean.shape[1:]), std.reshape(
            len(images), per, *std.shape[1:]
        )

    def encode_text(self, prompts: list[str]):
        """(prompt embeddings, pooled embeddings or None); cached when no text part trains."""
        import torch

        if not self.text_trains:
            missing = [p for p in dict.fromkeys(prompts) if p not in self._fixed_text]
            if missing:
                with torch.no_grad():
                    embeds, pooled = self._encode(missing)
                for k, prompt in enumerate(missing):
                    self._fixed_text[prompt] = (embeds[k], None if pooled is None else pooled[k])
            rows = [self._fixed_text[p] for p in prompts]
            pooled = None if rows[0][1] is None else torch.stack([r[1] for r in rows])
            return torch.stack([r[0] for r in rows]), pooled
        unique = list(dict.fromkeys(prompts))
        embeds, pooled = self._encode(unique)
        where = torch.tensor([unique.index(p) for p in prompts], device=embeds.device)
        return embeds[where], None if pooled is None else pooled[where]

    def _encode(self, prompts: list[str]):
        if self.sdxl:
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
            return embeds, pooled
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return embeds, None

    def _sample(self, means, stds, prompts_of, count: int, generator):
        import torch

        rows = torch.randint(0, len(means), (count,), generator=generator)
        views = torch.randint(0, means.shape[1], (count,), generator=generator)
        mean, std = means[rows, views], stds[rows, views]
        latents = mean + std * torch.randn(mean.shape, generator=generator)
        return latents * self.pipe.vae.config.scaling_factor, [prompts_of[int(r)] for r in rows]

    def loss(self, step: int, micro: int):
        """The denoising loss of one micro-batch (plus the prior's, weighted, when there is one)."""
        import torch
        import torch.nn.functional as F

        s = self.settings
        generator = torch.Generator().manual_seed(_stream(s.seed, step, micro))
        latents, prompts = self._sample(
            self.means, self.stds, [i.prompt for i in self.images], s.batch_size, generator
        )
        if self.prior:
            prior_latents, prior_prompts = self._sample(
                self.prior_means,
                self.prior_stds,
                [i.prompt for i in self.prior],
                s.batch_size,
                generator,
            )
            latents = torch.cat([latents, prior_latents])
            prompts = prompts + prior_prompts
        noise = torch.randn(latents.shape, generator=generator)
        steps = self.noise.config.num_train_timesteps
        t = torch.randint(0, steps, (len(latents),), generator=generator)
        noisy = self.noise.add_noise(latents, noise, t)
        if self.noise.config.prediction_type == "v_prediction":
            target = self.noise.get_velocity(latents, noise, t)
        else:
            target = noise
        noisy, t, target = noisy.to(self.device), t.to(self.device), target.to(self.device)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(s.mixed_precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            embeds, pooled = self.encode_text(prompts)
            extra = {}
            if self.sdxl:
                extra["added_cond_kwargs"] = {
                    "text_embeds": pooled,
                    "time_ids": self._time_ids(len(latents)),
                }
            prediction = self.pipe.unet(noisy, t, embeds, **extra).sample
        per = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if not self.prior:
            return per.mean()
        half = len(per) // 2
        return per[:half].mean() + s.prior_weight * per[half:].mean()

    def _time_ids(self, count: int):
        res = self.settings.resolution
        ids = self.pipe._get_add_time_ids(
            (res, res),
            (0, 0),
            (res, res),
            dtype=self.pipe.unet.dtype,
            text_encoder_projection_dim=self.pipe.text_encoder_2.config.projection_dim,
        )
        return ids.to(self.device).repeat(count, 1)

    def step(self, step: int) -> float:
        """One optimizer step (gradient accumulation included); returns its mean loss."""
        import torch

        s = self.settings
        lr = s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else s.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(s.gradient_accumulation_steps):
            loss = self.loss(step, micro) / s.gradient_accumulation_steps
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += float(loss.detach())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def fixed_loss(self, draws: int = 8) -> float:
        """The loss on `draws` fixed (image, timestep, noise) draws, which no training step
        uses: comparable before and after training, unlike the noisy per-step loss."""
        import torch

        with torch.no_grad():
            return float(np.mean([float(self.loss(-1 - k, 0)) for k in range(draws)]))

    def train_mode(self, on: bool) -> None:
        self.pipe.unet.train(on)
        for _, encoder, _ in self.encoders:
            encoder.train(on and self.text_trains)

    # Checkpoints: what trains, the optimizer, and the loss curve so far.
    def state(self, step: int, losses: list[float], meta: dict) -> dict:
        return {
            "step": step,
            "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "losses": list(losses),
            "meta": meta,
        }

    def load_state(self, state: dict) -> None:
        import torch

        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def grid(self, path: Path, seed: int) -> None:
        """A validation grid: a row per concept, `validation_images` renders of its prompt."""
        import torch

        s = self.settings
        self.train_mode(False)
        rows = []
        with torch.no_grad():
            for concept in self.concepts:
                count = s.validation_images
                render = dict(s.render)
                if render.get("negative_prompt") is not None:
                    render["negative_prompt"] = [render["negative_prompt"]] * count
                images = self.pipe(
                    prompt=[concept.images[0].prompt] * count,
                    height=s.resolution,
                    width=s.resolution,
                    generator=[torch.Generator("cpu").manual_seed(seed + k) for k in range(count)],
                    output_type="np",
                    **{k: v for k, v in render.items() if v is not None},
                ).images
                rows.append(np.concatenate(list(images), axis=1))
        self.train_mode(True)
        grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        Image.fromarray(grid).save(tmp)
        tmp.replace(path)

    def save_adapter(self, folder: Path) -> list[str]:
        """Write the trained weights in the format generation loads; returns the file names."""
        import torch

        s, pipe = self.settings, self.pipe
        if s.method == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = {
                "unet_lora_layers": convert_state_dict_to_diffusers(
                    get_peft_model_state_dict(pipe.unet)
                )
            }
            if s.train_text_encoder:
                for name, encoder, _ in self.encoders:
                    layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(
                        get_peft_model_state_dict(encoder)
                    )
            type(pipe).save_lora_weights(folder, **layers)
            return [LORA_FILE]
        if s.method == "textual_inversion":
            from safetensors.torch import save_file

            files = []
            for number, concept in enumerate(self.concepts):
                if self.sdxl:
                    state = {
                        part: inv.vectors[number : number + 1].detach().cpu().contiguous()
                        for part, inv in zip(("clip_l", "clip_g"), self.inversions, strict=True)
                    }
                else:
                    state = {
                        concept.token: self.inversions[0]
                        .vectors[number : number + 1]
                        .detach()
                        .cpu()
                        .contiguous()
                    }
                name = f"{embedding_stem(concept.token)}.safetensors"
                save_file(state, str(folder / name))
                files.append(name)
            return files
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            s.mixed_precision, torch.float32
        )
        pipe.unet.to(dtype)
        for _, encoder, _ in self.encoders:
            encoder.to(dtype)
        pipe.vae.to(dtype)
        pipe.save_pretrained(folder)
        return ["model_index.json"]


def embedding_stem(token: str) -> str:
    from augment.taxonomy.listfile import slugify

    return slugify(token) or "token"


# ---------------------------------------------------------------------------------------------
# Checkpoints and the training loop


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted((folder / "checkpoints").glob("step-*.pt"))
    return found[-1] if found else None


def read_checkpoint(folder: Path, meta: dict, steps: int) -> dict | None:
    """The latest checkpoint in `folder`, if it was trained on what `meta` says; an unreadable
    one, one of other images or settings, or one past `steps` is an error (nothing deleted)."""
    import torch

    path = latest_checkpoint(folder)
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        trained_on = {k: v for k, v in state["meta"].items() if k != "fixed_loss_start"}
    except Exception as exc:  # torch.load raises whatever unpickling a damaged file raises
        raise AugmentError(
            f"finetune: the checkpoint {path} cannot be read ({first_line(exc)}); move it away "
            "to start over, or rerun with --force (which deletes the folder)"
        ) from None
    if trained_on != meta:
        raise AugmentError(
            f"finetune: the checkpoint {path} was trained on other images or settings than the "
            "job names now; rerun with --force to start over (it is deleted then)"
        )
    if state["step"] > steps:
        raise AugmentError(
            f"finetune: {folder} has trained {state['step']} steps, more than the {steps} asked; "
            "raise finetune.steps, or rerun with --force to start over"
        )
    return state


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Write checkpoints/step-N.pt through a temp file, then drop the older ones."""
    import torch

    target = folder / "checkpoints" / f"step-{state['step']:07d}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    for older in target.parent.glob("step-*.pt"):
        if older != target:
            older.unlink(missing_ok=True)
    return target


class _StopRequest:
    """Ctrl-C during training asks for a stop at the end of the current step (a checkpoint is
    written there); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.asked = False
        self._previous = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._ask)
        return self

    def _ask(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fingerprint(concepts: list[TaughtConcept], prior: list[TrainImage]) -> dict:
    """What a checkpoint was trained on, compared before a resume."""
    return {
        "images": {c.id: [i.sha256 for i in c.images] for c in concepts},
        "tokens": {c.id: c.token for c in concepts},
        "prior": [i.sha256 for i in prior],
    }


def train_adapter(
    base: str,
    concepts: list[TaughtConcept],
    settings: TrainSettings,
    out: str | Path,
    prior: list[TrainImage] | tuple = (),
    base_name: str | None = None,
    config: str | None = None,
) -> dict:
    """Train `settings.method` on `concepts` from the model at `base` (a single-file checkpoint
    with the diffusers folder `config`); write the adapter and its card into `out` and return
    the card. A checkpoint in `out` is resumed from."""
    import torch

    from augment.config import GenerationSpec, SpecPaths
    from augment.generate.pipelines import check_model, load_pipeline, select_device
    from augment.progress import image_progress, quiet_libraries

    quiet_libraries()
    out = Path(out)
    if not concepts or not all(c.images for c in concepts):
        raise AugmentError("finetune: every concept needs at least one real image")
    check_model(base, base_name or base)
    device = select_device(settings.device)
    check_precision(settings.mixed_precision, device)
    meta = {
        "method": settings.method,
        "base": base_name or base,
        **fingerprint(concepts, list(prior)),
    }
    torch.manual_seed(settings.seed)
    pipe = load_pipeline(
        GenerationSpec(model=base_name or base, config=config, device=device),
        SpecPaths(model=str(base), config=config),
        keep_scheduler=True,
    )
    trainer = Trainer(pipe, concepts, settings, prior)  # checks the tokens
    start, losses = 0, []
    state = read_checkpoint(out, meta, settings.steps)
    if state is not None:
        trainer.load_state(state)
        start, losses = state["step"], list(state["losses"])
        meta["fixed_loss_start"] = state["meta"]["fixed_loss_start"]
        log.info("finetune: resuming %s from step %d", out, start)
    else:
        meta["fixed_loss_start"] = trainer.fixed_loss()
    out.mkdir(parents=True, exist_ok=True)
    trainer.train_mode(True)
    started = time.perf_counter()
    label = f"fine-tuning ({settings.method})"
    with _StopRequest() as stop, image_progress(settings.steps, label, unit="step") as advance:
        advance(start)
        for step in range(start, settings.steps):
            losses.append(trainer.step(step))
            done = step + 1
            recent = np.mean(losses[-20:])
            advance(1, f"loss {recent:.4f}")
            if done % settings.checkpoint_every == 0 or done == settings.steps or stop.asked:
                save_checkpoint(out, trainer.state(done, losses, meta))
            if settings.validation_every and done % settings.validation_every == 0:
                trainer.grid(out / "validation" / f"step-{done:07d}.png", settings.seed)
            if stop.asked:
                raise KeyboardInterrupt(f"stopped at step {done}; rerun to resume from there")
    seconds = time.perf_counter() - started
    trainer.train_mode(False)
    return _finish(out, trainer, losses, seconds, start, meta, base)


def _finish(out: Path, trainer: Trainer, losses, seconds, start, meta, base) -> dict:
    """Write weights, grid, curve and card into a temp folder, move them into `out`, then the
    card (last: its presence means the adapter is complete)."""
    import torch

    settings = trainer.settings
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=out))
    try:
        files = trainer.save_adapter(tmp)
        trainer.grid(tmp / "samples.png", settings.seed)
        plot_loss(losses, tmp / "loss.png")
        card = {
            "method": settings.method,
            "family": trainer.family,
            "base": meta["base"],
            "base_location": str(base),
            "concepts": [
                {
                    "id": c.id,
                    "name": c.name,
                    "token": c.token,
                    "prompt": c.images[0].prompt,
                    "images": [{"id": i.image_id, "sha256": i.sha256} for i in c.images],
                }
                for c in trainer.concepts
            ],
            "prior_images": len(trainer.prior),
            "files": files,
            "settings": asdict(settings),
            "learning_rate": settings.lr,
            "steps": settings.steps,
            "resumed_from": start,
            "final_loss": float(np.mean(losses[-20:])),
            "fixed_loss": {"start": meta["fixed_loss_start"], "end": trainer.fixed_loss()},
            "loss": [float(v) for v in losses],
            "seconds": round(seconds, 1),
            "steps_per_second": round((settings.steps - start) / seconds, 3) if seconds else None,
            "device": str(trainer.device),
            "threads": torch.get_num_threads(),
            "fingerprint": {k: v for k, v in meta.items() if k != "fixed_loss_start"},
        }
        (tmp / "README.md").write_text(card_text(card))
        for part in tmp.iterdir():
            _move(part, out / part.name)
        (out / f".{CARD}.tmp").write_text(json.dumps(card, indent=1))
        os.replace(out / f".{CARD}.tmp", out / CARD)  # last: the adapter is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def _move(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(source, target)


def plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(values) + 1), values, alpha=0.35, lw=0.7, label="per step")
    k = min(20, len(values))
    if k > 1:
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(values) + 1), smooth, lw=1.4, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def card_text(card: dict) -> str:
    method = {
        "lora": "DreamBooth-LoRA (UNet attention"
        + (" and text encoder" if card["settings"]["train_text_encoder"] else "")
        + f", rank {card['settings']['rank']})",
        "textual_inversion": "textual inversion (one new token per concept)",
        "dreambooth": "DreamBooth (the whole UNet"
        + (" and text encoder" if card["settings"]["train_text_encoder"] else "")
        + ")",
    }[card["method"]]
    s = card["settings"]
    resumed = f", resumed at step {card['resumed_from']}" if card["resumed_from"] else ""
    fixed = card["fixed_loss"]
    lines = [
        f"# augment fine-tune: {card['method']}",
        "",
        f"- Base model: `{card['base']}` ({card['family']})",
        f"- Method: {method}",
        f"- {card['steps']} steps, batch {s['batch_size']} x {s['gradient_accumulation_steps']} "
        f"accumulated, learning rate {card['learning_rate']:g} (warmup {s['warmup_steps']}), "
        f"{s['resolution']} px, seed {s['seed']}, mixed precision {s['mixed_precision']}",
        f"- Prior preservation: {card['prior_images']} class images (weight {s['prior_weight']:g})",
        f"- Loss on fixed draws: {fixed['start']:.4f} before, {fixed['end']:.4f} after; last 20 "
        f"steps {card['final_loss']:.4f} (`loss.png`)",
        f"- {card['seconds']:.0f} s on {card['device']} ({card['threads']} threads){resumed}",
        f"- Files: {', '.join(f'`{f}`' for f in card['files'])}; samples `samples.png` (a row "
        "per concept, its instance prompt)",
        "",
        "| concept id | name | token | real images | instance prompt |",
        "|---|---|---|---|---|",
        *(
            f"| {c['id']} | {c['name']} | `{c['token']}` | {len(c['images'])} | {c['prompt']} |"
            for c in card["concepts"]
        ),
        "",
        f"The id and SHA-256 (of the pixels trained on) of every real image are in `{CARD}`.",
        'In a job, prompts name a taught concept with `{token}`: "a photo of {token} {name}".',
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# From a job spec


def class_image_spec(
    spec: JobSpec, taught: list[TaughtConcept], concepts: list[Concept], folder: Path
) -> JobSpec:
    """Prior preservation's job: `images` renders of the class prompt per taught concept by the
    base model alone, at the training resolution, into `folder` (rendered by the normal engine:
    a rerun reuses what it holds)."""
    from augment.config import load_spec, validate_spec

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


def reusable_adapter(
    spec: JobSpec, taught: list[TaughtConcept], force: bool
) -> FinetuneResult | None:
    """The job's adapter when it is complete for these steps and images; `force` deletes the
    folder (checkpoints too) instead. Real images edited since it was trained are an error."""
    folder = Path(spec.paths.finetuned)
    if force and folder.exists():
        shutil.rmtree(folder)
    card = read_adapter_card(folder)
    if card is None or card["steps"] != spec.finetune.steps:
        return None
    if card["fingerprint"]["images"] != fingerprint(taught, [])["images"]:
        raise AugmentError(
            f"finetune: the real images under {spec.paths.finetune_source} changed since the "
            f"adapter {folder} was trained; rerun `augment finetune` with --force to retrain"
        )
    return result_of(folder, card, trained=False)


def result_of(folder: Path, card: dict, trained: bool) -> FinetuneResult:
    tokens = {c["id"]: c["token"] for c in card["concepts"]}
    return FinetuneResult(
        folder, card["method"], card["family"], tokens, card["steps"], trained, card
    )
