"""Find and load a diffusers pipeline: local folder, hub cache, or a builtin model.

Nothing is downloaded here. A model is either a diffusers folder on disk, a hub id that is
already in the local Hugging Face cache, or ``builtin:<name>``: a model `augment` builds or
ships itself. Each failure says which of these was tried and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

from augment.cache import cache_dir
from augment.errors import ModelError

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


#: The digits model trained by `augment digits train` and shipped inside the package.
SHIPPED_DIGITS_MODEL = Path(__file__).resolve().parents[1] / "digits" / "model"


def shipped_digits_model() -> Path:
    if not (SHIPPED_DIGITS_MODEL / "model_index.json").is_file():
        raise ModelError(
            f"the shipped digits model is missing from {SHIPPED_DIGITS_MODEL}; rebuild it with "
            f"`augment digits train --out {SHIPPED_DIGITS_MODEL}`"
        )
    return SHIPPED_DIGITS_MODEL


def builtin_models() -> dict:
    from augment.generate.tiny import save_tiny_sd

    return {
        "tiny-sd": lambda: save_tiny_sd(cache_dir() / "models" / "tiny-sd-v1"),
        "digits": shipped_digits_model,
    }


def resolve_model(model: str, base_dir: Path | None = None) -> str:
    """Turn the spec's `generation.model` into something `from_pretrained` can load offline."""
    if model.startswith("builtin:"):
        name = model.removeprefix("builtin:")
        builders = builtin_models()
        if name not in builders:
            raise ModelError(
                f"generation.model: unknown builtin model '{name}'; "
                f"available: {', '.join('builtin:' + n for n in builders)}"
            )
        return str(builders[name]())
    candidates = [Path(model).expanduser()]
    if base_dir is not None and not Path(model).is_absolute():
        candidates.append(base_dir / model)
    for path in candidates:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"generation.model: {path} is not a diffusers folder (no model_index.json); "
                    "save one with pipeline.save_pretrained(folder)"
                )
            return str(path)
        if path.exists():
            raise ModelError(
                f"generation.model: {path} is a file; give a diffusers folder "
                "(with model_index.json inside)"
            )
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_hub_id and in_hub_cache(model):
        return model
    hub = f", and no hub model '{model}' in the Hugging Face cache ({hub_home()})"
    raise ModelError(
        f"generation.model: '{model}' not found: no folder {candidates[-1].resolve()}"
        f"{hub if looks_like_hub_id else ''}. Give a diffusers folder (with model_index.json), "
        "a hub id downloaded where there is network (huggingface-cli download ID), "
        "or builtin:tiny-sd"
    )


def hub_home() -> str:
    return os.environ.get("HF_HOME", "~/.cache/huggingface")


def in_hub_cache(repo_id: str) -> bool:
    """Whether a hub model is already downloaded (nothing is fetched)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)


def select_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(
                f"generation.device: '{requested}' asked for, but no CUDA GPU is visible; "
                "use device: auto or cpu"
            )
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def torch_dtype(name: str, device: str):
    import torch

    if name == "float16" and device == "cpu":
        raise ModelError(
            "generation.dtype: float16 needs a GPU and this run is on the CPU; "
            "use dtype: float32 (or bfloat16)"
        )
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_txt2img_pipeline(
    model: str,
    dtype: str = "float32",
    device: str = "auto",
    scheduler: str | None = None,
    base_dir: Path | None = None,
):
    """Load a StableDiffusionPipeline offline, on the chosen device, with the chosen scheduler."""
    import diffusers

    location = resolve_model(model, base_dir)
    device = select_device(device)
    kwargs = dict(
        dtype=torch_dtype(dtype, device),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise ModelError(
            f"generation.model: cannot load '{model}' from {location}: {exc}. Check that the "
            "folder is a complete diffusers save (every component listed in model_index.json)"
        ) from exc
    if scheduler is not None:
        pipe.scheduler = scheduler_from_name(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_tokenizer(model: str, base_dir: Path | None = None):
    """The model's (first) CLIP tokenizer, offline: used to check prompt lengths."""
    from transformers import CLIPTokenizer

    location = resolve_model(model, base_dir)
    try:
        return CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", local_files_only=True)
    except OSError as exc:
        raise ModelError(f"generation.model: no tokenizer in '{model}': {exc}") from exc


def scheduler_from_name(name: str, config):
    import diffusers

    if name not in SCHEDULERS:
        raise ModelError(f"unknown scheduler '{name}'; known: {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)
