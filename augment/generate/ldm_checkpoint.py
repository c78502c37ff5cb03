"""Write a diffusers Stable Diffusion 1.x pipeline as one original-format (LDM/A1111) checkpoint.

Why: users hand us single `.safetensors` files in the CompVis/LDM layout, which diffusers loads
with `from_single_file`. To test that path offline we need such a file, and the only weights we
have offline are the tiny random pipeline of `augment.generate.tiny`. This module is the inverse
of diffusers' `diffusers.loaders.single_file_utils` conversion (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`) and of the old diffusers script
`scripts/convert_diffusers_to_original_stable_diffusion.py`. It covers the SD 1.x layout (an int
`layers_per_block`, any number of blocks, conv `proj_in`/`proj_out`, a CLIP text encoder), which
is both the tiny model's and the real SD 1.5's; an unknown key raises rather than being dropped.

Loading such a file offline (diffusers 0.42.1, read from `loaders/single_file.py`):

    StableDiffusionPipeline.from_single_file(
        "model.safetensors",
        config="path/to/diffusers-folder",  # a local folder: model_index.json + */config.json
        local_files_only=True,               # + tokenizer files and scheduler config
    )

- `config=<local folder>` is what makes it offline. A local folder is read directly: no model type
  inference, no hub call (even without `local_files_only`). The folder needs only the configs
  (`model_index.json`, `unet/`, `vae/`, `text_encoder/` `config.json`, `tokenizer/` files,
  `scheduler/scheduler_config.json`); the unet, vae and text encoder weights all come from the
  file, so `*.safetensors` may be absent. `config` must be a `str`: the unet/vae loaders reject a
  `Path` ("Invalid `config` argument").
- Without `config`, diffusers infers the model type from marker keys (`CHECKPOINT_KEY_NAMES`; SD
  1.x is the fallback "v1"; these files carry `model.diffusion_model.*` and
  `cond_stage_model.transformer.text_model.*`) and looks up a hub repo
  ("stable-diffusion-v1-5/stable-diffusion-v1-5"). With `local_files_only=True` it uses that repo
  from the HF cache, and if it is not cached and no `original_config` is given it *overrides*
  `local_files_only` and tries to download: `local_files_only=True` alone does not keep it off
  the network (HF_HUB_OFFLINE=1 does, by failing).
- `original_config=<local .yaml>` (v1-inference.yaml) configures only the unet and vae; without
  `config` it is "legacy loading": the tokenizer and text encoder config still come from
  "openai/clip-vit-large-patch14" in the HF cache. With both `config=` and `original_config=`,
  the yaml wins for unet/vae and the folder supplies the rest. `original_config_file=` is a
  deprecated alias of `original_config=`.
- Do not pass `prediction_type=` or `scheduler_type=`: they switch to a legacy scheduler built
  from defaults (beta_start=0.02, beta_end=0.085 without a yaml), not the folder's scheduler.
  Pass `scheduler=` an instance instead.
- The safety checker is never loaded from a single file; pass `safety_checker=None,
  requires_safety_checker=False` to silence the warning when the folder's model_index.json asks
  for one.

StableDiffusionXLPipeline.from_single_file takes the same arguments and needs the same for
offline use: `config=<local SDXL diffusers folder>` holding model_index.json and the configs of
unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2 and scheduler (or
`config="stabilityai/stable-diffusion-xl-base-1.0"` already in the HF cache), plus
`local_files_only=True`. Its file must carry `conditioner.embedders.0.transformer.text_model.*`
(CLIP-L) and `conditioner.embedders.1.model.*` (OpenCLIP bigG); the two text encoders are told
apart by position-embedding width, so a tiny SDXL whose encoders share a width loads CLIP-L
weights into both. `original_config` alone again needs the hub (CLIP-L and
"laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" configs and tokenizers).
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_FIXED = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _split(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight'): every mapped tensor ends in weight or bias."""
    module, _, param = key.rpartition(".")
    return module, param


def _unet_key(key: str, layers: int, up_with_attention: set[int]) -> str:
    """The LDM name of one UNet2DConditionModel key (input/middle/output_blocks numbering)."""
    module, param = _split(key)
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    parts = key.split(".")
    where, rest = parts[0], parts[1:]
    if where == "mid_block":  # resnet, attention, resnet -> middle_block.0, .1, .2
        kind, index, tail = rest[0], int(rest[1]), rest[2:]
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_resnet(tail)}"
        if kind == "attentions":
            return f"middle_block.{2 * index + 1}.{'.'.join(tail)}"
    elif where in ("down_blocks", "up_blocks"):
        block, kind, index, tail = int(rest[0]), rest[1], int(rest[2]), rest[3:]
        if where == "down_blocks":  # input_blocks.0 is conv_in; each block adds layers (+1 op)
            first, name = 1 + block * (layers + 1), "input_blocks"
        else:  # up blocks hold layers + 1 resnets; the upsampler sits in the last one
            first, name = block * (layers + 1), "output_blocks"
        if kind == "resnets":
            return f"{name}.{first + index}.0.{_resnet(tail)}"
        if kind == "attentions":
            return f"{name}.{first + index}.1.{'.'.join(tail)}"
        if kind == "downsamplers":
            return f"{name}.{first + layers}.0.op.{tail[-1]}"
        if kind == "upsamplers":
            slot = 2 if block in up_with_attention else 1
            return f"{name}.{first + layers}.{slot}.conv.{tail[-1]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def _resnet(tail: list[str]) -> str:
    return ".".join([_UNET_RESNET[tail[0]], *tail[1:]])


def _vae_key(key: str, num_up_blocks: int) -> str:
    """The LDM name of one AutoencoderKL key (down.i.block.j, reversed up.i, mid.block_k)."""
    module, param = _split(key)
    if module in _VAE_FIXED:
        return f"{_VAE_FIXED[module]}.{param}"
    parts = key.split(".")
    coder, where, rest = parts[0], parts[1], parts[2:]
    if where == "mid_block":
        kind, index, tail = rest[0], int(rest[1]), ".".join(rest[2:])
        if kind == "resnets":
            return f"{coder}.mid.block_{index + 1}.{tail}"
        if kind == "attentions":
            sub, _, param = tail.rpartition(".")
            return f"{coder}.mid.attn_{index + 1}.{_VAE_ATTENTION[sub]}.{param}"
    elif where in ("down_blocks", "up_blocks"):
        block, kind, tail = int(rest[0]), rest[1], rest[2:]
        if where == "down_blocks":
            name = f"{coder}.down.{block}"
        else:  # LDM numbers decoder levels from the lowest resolution up
            name = f"{coder}.up.{num_up_blocks - 1 - block}"
        if kind == "resnets":
            tail = ["nin_shortcut" if t == "conv_shortcut" else t for t in tail]
            return f"{name}.block.{'.'.join(tail)}"
        if kind in ("downsamplers", "upsamplers"):
            return f"{name}.{kind[:-2]}.conv.{tail[-1]}"  # downsamplers.0.conv -> downsample.conv
    elif module in ("quant_conv", "post_quant_conv") or where in ("conv_in", "conv_out"):
        return key
    raise KeyError(f"no LDM name for VAE key {key!r}")


def ldm_vae_state_dict(vae) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's weights under their LDM names, as a standalone VAE file holds them."""
    num_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = _vae_key(key, num_up)
        if ".mid.attn_" in ldm and ldm.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        ):
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convs, not linears
        out[ldm] = value
    return out


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's unet, vae and CLIP text encoder weights under their LDM/A1111 key names."""
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError(f"only an int layers_per_block has an SD 1.x layout, not {layers!r}")
    if getattr(unet.config, "use_linear_projection", False):
        raise ValueError("use_linear_projection (SD 2.x) is not an SD 1.x layout")
    unet_sd = unet.state_dict()
    up_with_attention = {
        int(k.split(".")[1]) for k in unet_sd if k.startswith("up_blocks.") and ".attentions." in k
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in unet_sd.items():
        out[UNET_PREFIX + _unet_key(key, layers, up_with_attention)] = value
    for key, value in ldm_vae_state_dict(vae).items():
        out[VAE_PREFIX + key] = value
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.`); LDM files keep it.
    clip_sd = text_encoder.state_dict()
    for key, value in clip_sd.items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[CLIP_PREFIX + name] = value
    # Real SD 1.x files carry CLIP's position_ids (a persistent buffer in old transformers);
    # keep it so the loader's handling of that now-unknown key is exercised too.
    positions = text_encoder.config.max_position_embeddings
    out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def write_ldm_checkpoint(pipe, path: Path) -> Path:
    """Save `pipe` (a diffusers StableDiffusionPipeline) as one LDM-layout .safetensors file."""
    return _save(ldm_state_dict(pipe), path)


def write_ldm_vae(vae, path: Path) -> Path:
    """Save an AutoencoderKL as one LDM-layout .safetensors file (as sdxl_vae.safetensors is)."""
    return _save(ldm_vae_state_dict(vae), path)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
