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

from augment.finetuning.adapter import (
    FinetuneResult,
    read_checkpoint,
    result_of,
    reusable_adapter,
    train_adapter,
)
from augment.finetuning.data import (
    TaughtConcept,
    TrainImage,
    TrainSettings,
    class_image_spec,
    read_class_images,
    real_images,
    settings_for,
    taught_concepts,
    token_for,
    tokens_for,
    train_image,
)
from augment.finetuning.trainer import LORA_FILE, Trainer

__all__ = [
    "LORA_FILE",
    "FinetuneResult",
    "TaughtConcept",
    "TrainImage",
    "TrainSettings",
    "Trainer",
    "class_image_spec",
    "read_checkpoint",
    "read_class_images",
    "real_images",
    "result_of",
    "reusable_adapter",
    "settings_for",
    "taught_concepts",
    "token_for",
    "tokens_for",
    "train_adapter",
    "train_image",
]
