"""The state of one fine-tune: the pipeline, what trains (LoRA layers, token vectors or the
whole UNet), the optimizer and the cached latents; a step, its loss, and the adapter's files.

Every random draw of step k comes from a generator seeded by (seed, k), so a run resumed from the
checkpoint of step k ends with the same weights as one that was never stopped."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from augment.errors import AugmentError, SpecError
from augment.finetuning.data import TaughtConcept, TrainImage, TrainSettings
from augment.generate.pipelines import LORA_TARGETS as UNET_TARGETS
from augment.generate.pipelines import LORA_WEIGHTS_FILE as LORA_FILE

log = logging.getLogger(__name__)

#: CLIP text-encoder projections a LoRA adapts (the UNet's: pipelines.LORA_TARGETS).
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
                # peft's own injection: transformers' `add_adapter` asks for a newer peft than
                # PyPI has (transformers 5.24 wants >= 0.22); the weights and names are the same.
                from peft import inject_adapter_in_model

                for _, encoder, _ in self.encoders:
                    inject_adapter_in_model(
                        LoraConfig(
                            r=s.rank,
                            lora_alpha=s.rank,
                            init_lora_weights="gaussian",
                            target_modules=TEXT_TARGETS,
                        ),
                        encoder,
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
