"""Load a diffusers pipeline from the locations a spec resolved: a folder, a file, a hub id.

Nothing is downloaded here. The spec's names (relative paths, ``builtin:`` names) were turned
into locations once, when it was loaded (`config.SpecPaths`): a diffusers folder on disk, a
single-file checkpoint, or a hub id that must already be in the local Hugging Face cache. Each
failure names the spec key, says which of these was tried and how to fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from augment.config import (
    SCHEDULERS,
    GenerationSpec,
    LoraSpec,
    SpecPaths,
    TextualInversionSpec,
    looks_like_hub_id,
)
from augment.errors import ModelError
from augment.generate.cuda_graphs import graph_forward

#: Pipeline classes by family and mode; interpolate drives the txt2img pipeline with its own
#: latents and text embeddings.
PIPELINES = {
    "sd": {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "controlnet": "StableDiffusionControlNetPipeline",
        "interpolate": "StableDiffusionPipeline",
    },
    "sdxl": {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "controlnet": "StableDiffusionXLControlNetPipeline",
        "interpolate": "StableDiffusionXLPipeline",
    },
}

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
#: A single-file VAE may also be a PyTorch weights file (as community VAEs ship: `.vae.pt`).
VAE_FILE_SUFFIXES = (*SINGLE_FILE_SUFFIXES, ".pt", ".bin")
#: A fine-tuned adapter's card (`augment.finetuning`): written last, so its presence means the
#: adapter is complete.
ADAPTER_CARD = "finetune.json"
#: The file a LoRA folder holds (diffusers' `save_lora_weights`).
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: The UNet attention projections a LoRA adapts, as diffusers' training scripts choose them.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def check_model(
    location: str,
    declared: str,
    key: str = "generation.model",
    suffixes: tuple[str, ...] = SINGLE_FILE_SUFFIXES,
) -> str:
    """`location` (resolved from the spec's `declared` name) is something diffusers can load
    offline: a diffusers folder, a single-file checkpoint (one of `suffixes`), or a hub id
    already in the cache."""
    path = Path(location)
    if path.exists():
        if (
            path.is_dir()
            and not (path / "model_index.json").is_file()
            and not (path / "config.json").is_file()
        ):
            raise ModelError(
                f"{key}: {path} is not a diffusers folder (no model_index.json, nor a model's "
                "config.json); save one with pipeline.save_pretrained(folder)"
            )
        if path.is_file() and path.suffix not in suffixes:
            kinds = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}"
            raise ModelError(
                f"{key}: {path} is a file but not a checkpoint ({kinds}); give a diffusers "
                "folder or a single-file checkpoint"
            )
        return location
    hub_id = looks_like_hub_id(location)
    if hub_id and in_hub_cache(location):
        return location
    where = (
        f"no such file or folder (beside the job file or in the current folder), and no hub "
        f"model '{location}' in the Hugging Face cache ({hub_home()})"
    )
    if not hub_id:
        where = f"no file or folder {location}"
    raise ModelError(
        f"{key}: '{declared}' not found: {where}. Give a diffusers folder (with "
        "model_index.json), a .safetensors checkpoint, a hub id downloaded where there is "
        "network (huggingface-cli download ID), or a builtin (builtin:tiny-sd)"
    )


def check_models(settings: GenerationSpec, paths: SpecPaths) -> None:
    """Every model and adapter the spec names exists, before a run touches its output folder."""
    check_model(paths.model, settings.model)
    if Path(paths.model).exists():
        if settings.family == "auto" or Path(paths.model).is_dir():
            model_family(paths.model)  # a truncated checkpoint or damaged index, named here
        check_components(paths.model, "generation.model")
        check_folder_fits(paths.model, settings)
    if settings.config is not None:
        check_model(paths.config, settings.config, "generation.config")
        mismatch = config_mismatch(Path(paths.model), paths.config)
        if mismatch:
            raise ModelError(
                f"generation.config: {paths.config} does not describe {paths.model}: {mismatch}"
            )
        if Path(paths.model).is_file():  # the file's parts are the config folder's
            check_folder_fits(paths.config, settings, "generation.config")
    if settings.vae is not None:
        check_vae(settings, paths)
    # A single file's parts are described by its config folder.
    described = paths.config if Path(paths.model).is_file() and paths.config else paths.model
    if settings.mode == "controlnet" and settings.controlnet is not None:
        check_model(paths.controlnet, settings.controlnet.model, "generation.controlnet.model")
        found = config_value(Path(paths.controlnet) / "config.json", "cross_attention_dim")
        expected = config_value(Path(described) / "unet" / "config.json", "cross_attention_dim")
        if None not in (found, expected) and found != expected:
            raise ModelError(controlnet_misfit(found, expected))
    for number, lora in enumerate(settings.loras):
        weights = lora_file(paths.loras[number], lora, number)
        mismatch = lora_mismatch(weights, described)
        if mismatch:
            raise ModelError(f"{lora_setting(number)}: LoRA {weights} does not fit: {mismatch}")
    for number, inversion in enumerate(settings.textual_inversions):
        path = embedding_path(paths.textual_inversions[number], inversion.path, number)
        mismatch = embedding_mismatch(path, described)
        if mismatch:
            raise ModelError(
                f"generation.textual_inversions[{number}].path: {path} does not fit: {mismatch}"
            )


def config_mismatch(checkpoint: Path, config: str) -> str | None:
    """Why a local config folder cannot describe a single-file checkpoint: the UNet's
    cross-attention width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), from one tensor's shape in the
    file and the folder's unet/config.json. diffusers failed with a bare key name
    ('label_emb.0.0.weight') after the run had written its output folder. None when it fits or
    cannot be told (a .ckpt, an unreadable file: the loader names those). A hub id in the
    cache is read there (diffusers' own size error came after OUT was written)."""
    unet_config = part_config(config, "unet")
    if checkpoint.suffix != ".safetensors" or not checkpoint.is_file() or unet_config is None:
        return None
    from safetensors import safe_open

    expected = config_value(unet_config, "cross_attention_dim")
    if expected is None:
        return None
    try:
        with safe_open(str(checkpoint), framework="pt") as handle:
            key = next(
                (
                    k
                    for k in handle.keys()
                    if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")
                ),
                None,
            )
            width = None if key is None else handle.get_slice(key).get_shape()[1]
    except Exception:  # noqa: BLE001 - safetensors' own errors: the loader names them
        return None
    if width is None or width == expected:
        return None
    return (
        f"the checkpoint's UNet reads text features of width {width}, the folder's {expected} "
        "(768: SD 1.x, 1024: SD 2.x, 2048: SDXL); name the diffusers folder of the checkpoint's "
        "own model family as config"
    )


def embedding_mismatch(path: Path, location: str) -> str | None:
    """Why an embedding file cannot fit the model folder at `location`, from its tensors'
    shapes: an SDXL one (clip_l, clip_g) on SD or the reverse, or a width the text encoder does
    not read (768: SD 1.x, 1024: SD 2.x). diffusers said so after the run had begun, printing
    the tensors or placeholders. None when it fits or cannot be told."""
    config = Path(location) / "text_encoder" / "config.json"
    if not config.is_file() or path.suffix not in (".safetensors", ".bin", ".pt"):
        return None
    try:
        state = read_weights(path)
        width = json.loads(config.read_text()).get("hidden_size")
    except Exception:  # noqa: BLE001 - unreadable here: the loader says why, in its words
        return None
    second = (Path(location) / "text_encoder_2").is_dir()
    if "clip_l" in state and "clip_g" in state:
        return None if second else "an SDXL embedding (clip_l and clip_g) on an SD model"
    if second:
        return "an SDXL model needs an embedding of clip_l and clip_g; this one has one part"
    tensors = [v for v in state.values() if hasattr(v, "shape")]
    for nested in (state.get("string_to_param"), state.get("emb_params")):  # A1111's layouts
        if isinstance(nested, dict):
            tensors += [v for v in nested.values() if hasattr(v, "shape")]
        elif hasattr(nested, "shape"):
            tensors.append(nested)
    found = tensors[0].shape[-1] if tensors else None
    if found is not None and width is not None and found != width:
        return (
            f"its vectors have {found} values, this model's text encoder reads {width}: an "
            "embedding of another family (768: SD 1.x, 1024: SD 2.x)"
        )
    return None


#: What diffusers loads from a LoRA folder when no file is named, in its order of preference.
#: peft's own names (`PeftModel.save_pretrained`), beside its adapter_config.json.
PEFT_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
LORA_DEFAULT_FILES = (LORA_WEIGHTS_FILE, "pytorch_lora_weights.bin", *PEFT_WEIGHTS_FILES)
#: The key prefix of a raw peft adapter's weights (a wrapped UNet or text encoder).
PEFT_PREFIX = "base_model.model."


def lora_setting(number: int | None, field: str = "path") -> str:
    """The job setting a LoRA comes from, for messages: `number` is its place in
    generation.loras, None the job's own fine-tune."""
    return "finetune" if number is None else f"generation.loras[{number}].{field}"


def lora_file(location: str, lora: LoraSpec, number: int | None = None) -> Path:
    """The weights file a LoRA loads: the file given, or in a folder the one `weight_name`
    names, else diffusers' default name, else the folder's only .safetensors file. The loader,
    the family check and provenance's hash all read this one file; `number` is the LoRA's
    place in generation.loras (None: the job's own fine-tune), for the messages."""
    setting, weight_setting = lora_setting(number), lora_setting(number, "weight_name")
    path = Path(location)
    if not path.exists():
        raise ModelError(f"{setting}: LoRA '{lora.path}' not found; give a folder or .safetensors")
    if path.is_file():
        if lora.weight_name is not None and lora.weight_name != path.name:
            raise ModelError(
                f"{weight_setting}: '{lora.weight_name}' names a file in a folder, and "
                f"{setting} is the file {path}; drop weight_name, or give the folder"
            )
        return path
    files = sorted(f.name for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
    if lora.weight_name is not None:
        if not (path / lora.weight_name).is_file():
            raise ModelError(
                f"{weight_setting}: '{lora.weight_name}' is not in the LoRA folder {path} "
                f"(its weight files: {', '.join(files) or 'none'})"
            )
        return path / lora.weight_name
    for name in LORA_DEFAULT_FILES:
        if (path / name).is_file():
            return path / name
    safetensors = [name for name in files if name.endswith(".safetensors")]
    if len(safetensors) == 1:
        return path / safetensors[0]
    found = f"several weight files ({', '.join(safetensors)})" if safetensors else "no weights"
    raise ModelError(
        f"{setting}: the LoRA folder {path} holds {found}: name the file with weight_name"
    )


def embedding_path(location: str, declared: str, number: int) -> Path:
    if not Path(location).exists():
        raise ModelError(
            f"generation.textual_inversions[{number}].path: embedding '{declared}' not found"
        )
    return Path(location)


def hub_home() -> str:
    """The Hugging Face hub cache looked in (HF_HUB_CACHE, else HF_HOME's hub/)."""
    import huggingface_hub.constants

    return str(huggingface_hub.constants.HF_HUB_CACHE)


def hub_file(repo_id: str, name: str) -> Path | None:
    """A file of a hub model already in the cache (nothing is fetched); None when the name is
    not a hub id or the file is not there."""
    if not looks_like_hub_id(repo_id):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, name)
    return Path(found) if isinstance(found, str) else None


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model (a pipeline or one model), if downloaded."""
    for name in ("model_index.json", "config.json"):
        found = hub_file(repo_id, name)
        if found is not None:
            return found.parent
    return None


def in_hub_cache(repo_id: str) -> bool:
    """Whether a hub model (pipeline or single model) is already downloaded; nothing is fetched."""
    return hub_snapshot(repo_id) is not None


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


def pipeline_index(location: str) -> Path | None:
    """The model_index.json of a whole pipeline, a local folder or a hub id in the cache; None
    for one model (a VAE's own folder or repository, a single file)."""
    path = Path(location)
    if path.exists():
        index = path / "model_index.json"
        return index if index.is_file() else None
    return hub_file(location, "model_index.json")


def read_index(index: Path) -> dict:
    """A pipeline's model_index.json, or an error that says the folder is damaged."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{index} cannot be read ({first_line(exc)}): the model folder is damaged; "
            "download or save it again"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"{index} is not a pipeline's index (a JSON object): save it again")
    return data


def check_components(location: str, key: str) -> None:
    """Every component a local pipeline folder's model_index.json lists has its subfolder: a
    missing vae/ failed deep in diffusers, naming config.json."""
    index = pipeline_index(location) if Path(location).is_dir() else None
    if index is None:
        return
    for name, value in read_index(index).items():
        listed = isinstance(value, list) and value and value[0] is not None
        if listed and not name.startswith("_") and not (Path(location) / name).is_dir():
            raise ModelError(
                f"{key}: {location}/model_index.json lists {name}, but {location}/{name} is "
                "missing: the model folder is incomplete; download or save it again"
            )


def check_folder_fits(
    location: str, settings: GenerationSpec, key: str = "generation.model"
) -> None:
    """A local pipeline folder's components fit the family and mode the job renders with: an
    SD folder taken for SDXL (its index's class name, or `family: sdxl`), an SDXL refiner (no
    first text encoder) or an inpainting UNet in txt2img failed every render, after the run had
    written its output folder, as a fault of augment. (A single file's folder is its config.)"""
    folder = Path(location)
    if not folder.is_dir() or pipeline_index(location) is None:
        return
    second = (folder / "text_encoder_2").is_dir() and (folder / "tokenizer_2").is_dir()
    family = model_family(location) if settings.family == "auto" else settings.family
    where = f"{key}: {location}"
    if family == "sdxl" and not second:
        raise ModelError(
            f"{where} has no text_encoder_2 and tokenizer_2, which SDXL renders with: it is an "
            "SD 1.x/2.x model (its model_index.json or family: says SDXL); set family: sd"
        )
    if family == "sd" and second:
        raise ModelError(f"{where} is an SDXL model (it has text_encoder_2); set family: sdxl")
    if not (folder / "text_encoder").is_dir():
        raise ModelError(
            f"{where} has no text_encoder: an SDXL refiner, which works on another model's "
            "latents; give a base model"
        )
    channels = config_value(folder / "unet" / "config.json", "in_channels")  # None: the loader's
    if channels == 9 and settings.mode != "inpaint":
        raise ModelError(
            f"{where} is an inpainting model (its UNet reads 9 channels: the image, its mask and "
            f"the noise); use it with mode: inpaint, or give a base model for {settings.mode}"
        )


def model_family(location: str) -> str:
    """'sdxl' when the model has a second text encoder, else 'sd' (1.x and 2.x)."""
    path = Path(location)
    if path.is_file():
        from safetensors import safe_open

        if path.suffix != ".safetensors":
            raise ModelError(
                f"generation.family: cannot read the family of {path}; set family: sd or sdxl"
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type
            raise ModelError(
                f"generation.model: {path} cannot be read as a .safetensors checkpoint "
                f"({first_line(exc)}); it may be truncated: download or save it again"
            ) from None
        return "sdxl" if any(k.startswith("conditioner.") for k in keys) else "sd"
    index = pipeline_index(location)
    if index is None:
        return "sd"
    data = read_index(index)
    return "sdxl" if "text_encoder_2" in data or "XL" in data.get("_class_name", "") else "sd"


def has_safety_checker(location: str) -> bool:
    index = Path(location) / "model_index.json"
    if not index.is_file():
        return False
    entry = read_index(index).get("safety_checker")
    return bool(entry and entry[0])


def load_controlnet(settings: GenerationSpec, paths: SpecPaths, dtype):
    import diffusers

    location = check_model(
        paths.controlnet, settings.controlnet.model, "generation.controlnet.model"
    )
    try:
        return diffusers.ControlNetModel.from_pretrained(
            location, dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"generation.controlnet.model: cannot load a ControlNet from {location}: {exc}"
        ) from exc


def load_vae(settings: GenerationSpec, paths: SpecPaths, dtype):
    """The VAE `generation.vae` names: an AutoencoderKL folder, a pipeline folder's vae/, or a
    single .safetensors file (LDM names, as sdxl_vae.safetensors), which takes its config from
    the model's own vae/ (the model folder, or generation.config beside a single-file model)."""
    import diffusers

    location = check_vae(settings, paths)
    subfolder = "vae" if pipeline_index(location) is not None else None  # a pipeline's vae/
    try:
        if Path(location).is_file():
            config = paths.config if Path(paths.model).is_file() else paths.model
            if config is None:
                raise ModelError(
                    f"generation.vae: {location} is a single file, configured as the model's "
                    "vae/; the model is a single file too: set generation.config to a diffusers "
                    "folder of its family"
                )
            return diffusers.AutoencoderKL.from_single_file(
                location, config=config, subfolder="vae", dtype=dtype, local_files_only=True
            )
        return diffusers.AutoencoderKL.from_pretrained(
            location, subfolder=subfolder, dtype=dtype, local_files_only=True
        )
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers' own errors too (a file with no VAE)
        raise ModelError(
            f"generation.vae: cannot load a VAE (AutoencoderKL) from {location}: {first_line(exc)}"
        ) from exc


def check_vae(settings: GenerationSpec, paths: SpecPaths) -> str:
    """The VAE `generation.vae` names exists and fits the model, as far as its files say
    without loading it (a folder's config, a single file's keys): a run refuses a misfit before
    it writes anything. Returns its location."""
    location = check_model(paths.vae, settings.vae, "generation.vae", VAE_FILE_SUFFIXES)
    path = Path(location)
    if path.is_file():
        check_single_file_vae_depth(path, own_config(paths, "vae"), settings)
    elif path.is_dir():  # a hub id's files are checked as they load
        folder = path / "vae" if pipeline_index(location) is not None else path
        config = check_vae_folder(folder, settings)
        unet = own_config(paths, "unet")
        channels = None if unet is None else unet.get("out_channels")
        misfit = vae_misfit(config, channels, own_config(paths, "vae"), settings)
        if misfit:
            raise ModelError(misfit)
    return location


def check_vae_folder(folder: Path, settings: GenerationSpec) -> dict:
    """A local VAE folder holds an AutoencoderKL's config (a pipeline's vae/ included), said
    in words rather than by the loader of whatever model is there. Returns that config."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(
            f"generation.vae: {folder} holds no config.json: give an AutoencoderKL folder, a "
            "pipeline folder with a vae/, or one .safetensors file"
        )
    data = json.loads(config.read_text())
    kind = data.get("_class_name")
    if kind not in (None, "AutoencoderKL"):
        raise ModelError(
            f"generation.vae: {folder} is a {kind}, not a VAE (AutoencoderKL); give the VAE's "
            "own folder or its pipeline's"
        )
    return data


def check_single_file_vae_depth(path: Path, own: dict | None, settings: GenerationSpec) -> None:
    """A single-file VAE takes the model's own VAE config (`own`), so its levels must be as
    many: diffusers loads a deeper file whose last levels match without a word, leaving layers
    unloaded."""
    import re

    if own is None or "block_out_channels" not in own:
        return
    try:
        keys = checkpoint_keys(path)
    except Exception as exc:  # noqa: BLE001 - safetensors' and torch's own errors
        raise ModelError(
            f"generation.vae: cannot read {path} as a checkpoint ({first_line(exc)}); give an "
            "AutoencoderKL folder or one VAE file"
        ) from exc
    level = re.compile(r"encoder\.down\.(\d+)\.")
    levels = {m.group(1) for key in keys if (m := level.search(key))}
    expected = len(own["block_out_channels"])
    if levels and len(levels) != expected:
        raise ModelError(
            f"generation.vae: {settings.vae} has {len(levels)} levels, the model's own VAE "
            f"{expected}: it shrinks images by another factor; use a VAE made for this "
            "model's family"
        )


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a single-file checkpoint (a .ckpt's `state_dict` unwrapped), read
    without building a model: safetensors' header, or a PyTorch file mapped, not read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in the legacy (not zip) format cannot be mapped
        data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("state_dict", data) if isinstance(data, dict) else {}
    return [str(key) for key in state]


def check_vae_fits(pipe, settings: GenerationSpec, paths: SpecPaths) -> None:
    """The loaded replacement VAE fits the loaded UNet (`vae_misfit`): `check_vae` read what
    a local folder says before the run; a hub model's is known once loaded."""
    config = dict(pipe.vae.config)
    misfit = vae_misfit(config, pipe.unet.config.out_channels, own_config(paths, "vae"), settings)
    if misfit:
        raise ModelError(misfit)


def vae_misfit(
    config: dict, unet_channels: int | None, own: dict | None, settings: GenerationSpec
) -> str | None:
    """Why a replacement VAE (its `config`) cannot serve the model, or None: it must make the
    latents the UNet denoises, as many channels (`unet_channels`), and shrink images by the
    same factor as the model's own VAE (`own`'s config), where these are known."""
    made = config.get("latent_channels", 4)
    if unet_channels is not None and made != unet_channels:
        return (
            f"generation.vae: {settings.vae} makes latents of {made} channels, the model's UNet "
            f"denoises {unet_channels}: use a VAE made for this model's family"
        )
    if own is None or "block_out_channels" not in own or "block_out_channels" not in config:
        return None
    factor, own_factor = (
        2 ** (len(c) - 1) for c in (config["block_out_channels"], own["block_out_channels"])
    )
    if factor != own_factor:
        return (
            f"generation.vae: {settings.vae} shrinks images {factor}x into latents, the model's "
            f"own VAE {own_factor}x: its UNet would denoise latents of another size than it "
            "learned; use a VAE made for this model's family"
        )
    scale, own_scale = config.get("scaling_factor"), own.get("scaling_factor")
    if scale is not None and own_scale is not None and abs(scale - own_scale) > 1e-4 * own_scale:
        return (  # SDXL's VAE on SD: same shapes, another latent space (0.13025 vs 0.18215)
            f"generation.vae: {settings.vae} scales its latents by {scale:g}, the model's own "
            f"VAE by {own_scale:g}: it was trained for another model's latent space (SDXL's "
            "VAE on SD, say), and would decode washed-out or garbled images; use a VAE made "
            "for this model's family"
        )
    return None


def own_config(paths: SpecPaths, part: str) -> dict | None:
    """The config of one of the model's own parts ("vae", "unet": its folder's, a single
    file's generation.config folder's, or a cached hub pipeline's PART/config.json); None
    where there is none to read."""
    folder = paths.config if Path(paths.model).is_file() else paths.model
    path = None if folder is None else part_config(folder, part)
    return None if path is None else json.loads(path.read_text())


def part_config(folder: str, part: str) -> Path | None:
    """A pipeline's PART/config.json: in its folder, or in the cache of a hub id; None where
    there is none."""
    path = Path(folder) / part / "config.json"
    if path.is_file():
        return path
    return None if Path(folder).exists() else hub_file(folder, f"{part}/config.json")


def load_base(settings: GenerationSpec, paths: SpecPaths, family: str, device: str):
    """The pipeline class for (family, mode), from a folder, a hub cache or a single file."""
    import diffusers

    location = paths.model
    dtype = torch_dtype(settings.dtype, device)
    cls = getattr(diffusers, PIPELINES[family][settings.mode])
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    if settings.mode == "controlnet":
        kwargs["controlnet"] = load_controlnet(settings, paths, dtype)
    if settings.vae is not None:
        kwargs["vae"] = load_vae(settings, paths, dtype)
    if family == "sd" and not (settings.safety_checker and has_safety_checker(location)):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    variant = weights_variant(location)
    if variant is not None:
        kwargs["variant"] = variant
    try:
        if Path(location).is_file():
            if settings.config is None:
                raise ModelError(
                    f"generation.config: {location} is a single-file checkpoint; name a diffusers "
                    f"folder (or cached hub id) of the same family ({family}) whose configs "
                    "describe it, e.g. config: models/sd21 (nothing is downloaded)"
                )
            config = check_model(paths.config, settings.config, "generation.config")
            return cls.from_single_file(location, config=config, **kwargs)
        return cls.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"generation.model: cannot load '{settings.model}' as {family} {settings.mode} "
            f"({cls.__name__}) from {location}: {first_line(exc)}. Check that it is complete "
            "(every component listed in model_index.json) and of that family"
        ) from exc


def weights_variant(location: str) -> str | None:
    """The weights variant a folder holds only ('fp16' for a hub download of
    `variant="fp16"`: unet/diffusion_pytorch_model.fp16.safetensors and no plain file), which
    diffusers loads only when asked; None where the plain weights are there."""
    unet = Path(location) / "unet"
    if not unet.is_dir() or any(
        (unet / f"diffusion_pytorch_model{suffix}").is_file() for suffix in (".safetensors", ".bin")
    ):
        return None
    variants = sorted(
        {
            p.name.split(".")[1]
            for p in unet.glob("diffusion_pytorch_model.*.*")
            if p.suffix in (".safetensors", ".bin")
        }
    )
    return variants[0] if len(variants) == 1 else None


def first_line(exc: BaseException) -> str:
    """An exception's message on one line: its first two lines (torch puts the cause second)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def check_controlnet_fits(pipe) -> None:
    """A hub id's ControlNet, which `check_models` could not read before the run."""
    expected = pipe.unet.config.cross_attention_dim
    found = pipe.controlnet.config.cross_attention_dim
    if found != expected:
        raise ModelError(controlnet_misfit(found, expected))


def controlnet_misfit(found: int, expected: int) -> str:
    return (
        f"generation.controlnet.model: this ControlNet expects text features of width {found}, "
        f"the model's UNet reads {expected} (768: SD 1.x, 1024: SD 2.x, 2048: SDXL): use a "
        "ControlNet trained for this base model's family"
    )


def config_value(path: Path, key: str):
    """One value of a local config.json; None where the file is absent or unreadable (the
    loader names that)."""
    try:
        return json.loads(path.read_text()).get(key) if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def load_loras(
    pipe, settings: GenerationSpec, paths: SpecPaths, family: str, card: dict | None = None
) -> None:
    """Load each LoRA as a named adapter (the job's fine-tuned one last, at scale 1), then
    activate them all with their scales."""
    wanted = [
        (lora_setting(n), lora_file(paths.loras[n], lora, n), lora)
        for n, lora in enumerate(settings.loras)
    ]
    if card is not None and card["method"] == "lora":
        tuned = LoraSpec(path=paths.finetuned)
        wanted.append((lora_setting(None), lora_file(paths.finetuned, tuned), tuned))
    names = []
    for number, (key, weights, _) in enumerate(wanted):
        name = f"lora{number}"
        try:
            peft = peft_lora_state(weights, key)
            if peft is not None:
                pipe.load_lora_weights(peft, adapter_name=name)
            else:
                pipe.load_lora_weights(
                    str(weights.parent), weight_name=weights.name, adapter_name=name
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"{key}: LoRA {weights} does not fit this {family} model: {first_line(exc)}"
            ) from exc
        loaded = {n for adapters in pipe.get_list_adapters().values() for n in adapters}
        if name not in loaded:
            raise ModelError(f"{key}: LoRA {weights} holds no weights for this {family} model")
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[lora.scale for _, _, lora in wanted])


def peft_lora_state(weights: Path, setting: str) -> dict | None:
    """A raw peft adapter (`PeftModel.save_pretrained` of a wrapped UNet or text encoder:
    `base_model.model.*.lora_A/B` keys, the scale in adapter_config.json) in the layout
    diffusers loads, its `lora_alpha / r` folded into the up weights; None for any other
    layout. diffusers read these keys as none of the model's and loaded nothing."""
    state = read_weights(weights)
    if not state or not all(k.startswith(PEFT_PREFIX) for k in state):
        return None
    config_path = weights.parent / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{setting}: {weights} is a peft adapter, whose scale is in adapter_config.json, "
            f"and {config_path} cannot be read ({first_line(exc)}); save the adapter again "
            "with save_pretrained"
        ) from None
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ModelError(
            f"{setting}: the peft adapter {weights.parent} sets ranks or alphas per layer "
            "(rank_pattern, alpha_pattern), which augment does not fold; save it in diffusers' "
            "layout (pipeline.save_lora_weights)"
        )
    rank, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    scale = alpha / (rank**0.5 if config.get("use_rslora") else rank)
    part = "text_encoder" if any(".text_model." in f".{k}" for k in state) else "unet"
    return {
        f"{part}.{key.removeprefix(PEFT_PREFIX)}": tensor * scale if ".lora_B." in key else tensor
        for key, tensor in state.items()
    }


def read_adapter_card(folder: str | Path) -> dict | None:
    """A fine-tuned adapter's card, or None when the adapter is not complete."""
    path = Path(folder) / ADAPTER_CARD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"finetune: the card {path} cannot be read ({first_line(exc)})") from None


def finetune_card(paths: SpecPaths) -> dict | None:
    """The card of the job's fine-tune (`finetune:`), which must be trained by now."""
    if paths.finetuned is None:
        return None
    card = read_adapter_card(paths.finetuned)
    if card is None:
        raise ModelError(
            f"finetune: the adapter {paths.finetuned} is not trained yet; run `augment finetune "
            "JOB` (or `augment run JOB`, which trains it first)"
        )
    return card


def rendering_paths(paths: SpecPaths, card: dict | None) -> SpecPaths:
    """The paths a pipeline renders from: a DreamBooth fine-tune is the model itself (the
    pipeline loads it, and provenance hashes it)."""
    if card is not None and card["method"] == "dreambooth":
        return replace(paths, model=paths.finetuned, config=None)
    return paths


def check_finetune_family(card: dict | None, family: str, paths: SpecPaths) -> None:
    if card is not None and card["family"] != family:
        raise ModelError(
            f"finetune: the adapter {paths.finetuned} was trained on a {card['family']} model, "
            f"this one is {family}; retrain it on this model (augment finetune JOB --force)"
        )


def lora_mismatch(weights: Path, location: str) -> str | None:
    """Why a LoRA file cannot fit the model at `location`, read from tensor shapes alone: the
    cross-attention width a LoRA was made for (768 SD 1.x, 1024 SD 2.x, 2048 SDXL) must be
    the UNet's. In diffusers', peft's and kohya's (A1111's) key layouts, .safetensors or a
    torch .bin. None when it fits or cannot be told (a hub id, a single file, another layout)."""
    unet_config = Path(location) / "unet" / "config.json"
    if not unet_config.is_file() or weights.suffix not in (".safetensors", ".bin"):
        return None
    expected = json.loads(unet_config.read_text()).get("cross_attention_dim")
    try:
        width = lora_text_width(weights)
    except Exception as exc:  # noqa: BLE001 - safetensors' and pickle's own error types
        return f"it cannot be read ({first_line(exc)})"
    if width is not None and width != expected:
        return (
            f"it was made for text features of width {width}, this model's UNet reads "
            f"{expected}: a LoRA of another family (768: SD 1.x, 1024: SD 2.x, 2048: SDXL)"
        )
    return None


def is_text_key_down(key: str) -> bool:
    """A LoRA's down projection of a cross-attention key (the text features it reads):
    diffusers' and peft's `unet.*attn2.to_k.lora.down` / `lora_A`, kohya's
    `lora_unet_*attn2_to_k.lora_down`."""
    if key.startswith(("unet.", PEFT_PREFIX)):
        return "attn2.to_k.lora" in key and ("lora_A" in key or "lora.down" in key)
    return key.startswith("lora_unet_") and "attn2_to_k.lora_down" in key


def lora_text_width(weights: Path) -> int | None:
    """The text-feature width a LoRA file's cross-attention keys read, or None."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():
                if is_text_key_down(key):
                    return handle.get_slice(key).get_shape()[-1]
        return None
    for key, tensor in read_weights(weights).items():
        if is_text_key_down(key) and hasattr(tensor, "shape"):
            return tensor.shape[-1]
    return None


def load_textual_inversions(
    pipe, settings: GenerationSpec, paths: SpecPaths, card: dict | None = None
) -> None:
    """Embeddings for new tokens (the job's fine-tuned ones last); an SDXL file holds one per
    text encoder (clip_l, clip_g)."""
    import pickle

    from safetensors import SafetensorError

    wanted = [
        (
            f"generation.textual_inversions[{n}].path",
            embedding_path(paths.textual_inversions[n], inversion.path, n),
            inversion,
        )
        for n, inversion in enumerate(settings.textual_inversions)
    ]
    if card is not None and card["method"] == "textual_inversion":
        for concept, file in zip(card["concepts"], card["files"], strict=True):
            path = Path(paths.finetuned) / file
            wanted.append(
                ("finetune", path, TextualInversionSpec(path=str(path), token=concept["token"]))
            )
    for key, path, inversion in wanted:
        try:
            if getattr(pipe, "text_encoder_2", None) is not None:
                state = read_weights(Path(path))
                if "clip_l" not in state or "clip_g" not in state:
                    raise ModelError(
                        f"{key}: an SDXL embedding needs clip_l and clip_g tensors; {path} has "
                        f"{', '.join(state)}"
                    )
                for part, encoder, tokenizer in (
                    ("clip_l", pipe.text_encoder, pipe.tokenizer),
                    ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
                ):
                    pipe.load_textual_inversion(
                        state[part],
                        token=inversion.token,
                        text_encoder=encoder,
                        tokenizer=tokenizer,
                    )
            else:
                pipe.load_textual_inversion(str(path), token=inversion.token)
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            SafetensorError,
            pickle.UnpicklingError,
        ) as exc:
            raise ModelError(f"{key}: cannot load {path}: {first_line(exc)}") from exc


def read_weights(path: Path) -> dict:
    """A weights file's named tensors (an embedding, a LoRA): safetensors, or a torch file (.pt,
    .bin) read without running code in it. A .pt was read as safetensors, and failed as a fault
    of augment."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not named tensors")
    return state


def load_pipeline(settings: GenerationSpec, paths: SpecPaths, keep_scheduler: bool = False):
    """The diffusers pipeline a spec asks for, loaded offline, ready on its device.

    Family and mode pick the class; then VAE, scheduler, ControlNet, LoRAs, textual inversions,
    attention, VAE slicing/tiling and torch.compile are applied as the spec says.
    """
    card = finetune_card(paths)
    paths = rendering_paths(paths, card)
    location = check_model(paths.model, settings.model)
    device = select_device(settings.device)
    family = model_family(location) if settings.family == "auto" else settings.family
    check_finetune_family(card, family, paths)
    pipe = load_base(settings, paths, family, device)
    if settings.vae is not None:
        check_vae_fits(pipe, settings, paths)
    if settings.mode == "controlnet":
        check_controlnet_fits(pipe)
    if not keep_scheduler:
        pipe.scheduler = scheduler_from_name(settings.scheduler, pipe.scheduler.config)
    load_loras(pipe, settings, paths, family, card)
    load_textual_inversions(pipe, settings, paths, card)
    if settings.attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
    if settings.vae_slicing:
        pipe.vae.enable_slicing()
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    apply_fast_paths(pipe, settings)
    pipe.family = family
    return pipe


def apply_fast_paths(pipe, settings: GenerationSpec) -> None:
    """channels_last, fused QKV, torch.compile or CUDA graphs as the spec says (`bench perf`
    measures each). Compiled kernels go to a persistent folder, so a rerun and every worker of
    a node compile once."""
    import torch

    if settings.attention in SDPA_KERNELS:
        pin_attention_kernel(pipe.unet, settings.attention)
    if settings.fuse_qkv:
        pipe.fuse_qkv_projections()
    if settings.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if settings.compile_vae:
        use_compile_cache(settings.compile_cache)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder)
    if settings.compile:
        use_compile_cache(settings.compile_cache)
        pipe.unet = torch.compile(pipe.unet, mode=settings.compile_mode, fullgraph=False)
    elif settings.cuda_graphs and settings.batch_size != "auto":
        # not with `auto`: its probe measures eager memory, and a graph's memory stays held
        # beside the VAE decode, so the batch it picks could overflow the GPU
        graph_forward(pipe.unet)


def use_compile_cache(folder: str | None) -> Path:
    """Point inductor's and Triton's caches at `folder` (default: the augment cache's
    torch-compile/), with the FX-graph cache on."""
    import torch._inductor.config as inductor

    from augment.cache import cache_dir

    path = Path(folder).expanduser() if folder else cache_dir() / "torch-compile"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    inductor.fx_graph_cache = True
    return path


def pin_attention_kernel(unet, name: str) -> None:
    """Run the UNet's attention on one SDPA kernel (the VAE's single 512-wide head is left to
    PyTorch: flash and cuDNN do not take it). Fails here, naming the kernel, when the UNet's
    head sizes, this device or this dtype have no such kernel, not on every batch."""
    import functools

    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    head_sizes = {m.inner_dim // m.heads for m in unet.modules() if isinstance(m, Attention)}
    for size in sorted(head_sizes):
        query = torch.zeros(1, 1, 8, size, device=unet.device, dtype=unet.dtype)
        try:
            with attention_kernel(name):
                F.scaled_dot_product_attention(query, query, query)
        except RuntimeError as exc:
            raise ModelError(
                f"generation.attention: the {name} kernel cannot run heads of {size} on "
                f"{unet.device} in {unet.dtype} ({first_line(exc)}); use attention: sdpa to let "
                "PyTorch choose"
            ) from exc
    forward = unet.forward

    @functools.wraps(forward)
    def pinned(*args, **kwargs):
        with attention_kernel(name):
            return forward(*args, **kwargs)

    unet.forward = pinned


#: `attention:` values that pin PyTorch's scaled-dot-product attention to one kernel.
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def attention_kernel(name: str):
    """A context that pins PyTorch's SDPA to one of SDPA_KERNELS."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel(backends[name])


def load_txt2img_pipeline(
    location: str, dtype: str = "float32", device: str = "auto", scheduler: str | None = None
):
    """A text-to-image pipeline from a folder (or cached hub id), with the model's own
    scheduler unless one is named."""
    settings = GenerationSpec(
        model=location, dtype=dtype, device=device, scheduler=scheduler or "DDIM"
    )
    return load_pipeline(settings, SpecPaths(model=location), keep_scheduler=scheduler is None)


def load_tokenizer(location: str, declared: str):
    """The model's (first) CLIP tokenizer, offline: used to check prompt lengths."""
    from transformers import CLIPTokenizer

    from augment.progress import quiet_transformers

    quiet_transformers()

    check_model(location, declared)
    try:
        return CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"generation.model: no tokenizer in '{declared}': {exc}") from exc


def scheduler_from_name(name: str, config):
    import diffusers

    if name not in SCHEDULERS:
        raise ModelError(f"unknown scheduler '{name}'; known: {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)
