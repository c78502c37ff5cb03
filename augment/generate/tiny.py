"""Tiny random Stable Diffusion components, built in code.

No weights can be downloaded in tests or on a first run, so these build real diffusers
components (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, a scheduler) small
enough to render on a CPU in seconds. They are saved with `save_pretrained` and loaded back with
`from_pretrained`: the same path a real Stable Diffusion folder takes.

Beyond SD 1.x there are tiny SDXL, SD inpainting, ControlNet (SD and SDXL), LoRA, textual
inversion and safety-checker models, so every model family can be tested without a download.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

#: Words the tiny tokenizer keeps whole; any other text still tokenizes, letter by letter.
TINY_WORDS = tuple(
    (
        "a an the of in on with and photo picture image drawing handwritten digit number "
        "zero one two three four five six seven eight nine white black background"
    ).split()
)


#: CLIP's image normalisation, for the tiny models' image processors.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (as in openai/CLIP)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def write_clip_vocab(folder: Path, words: tuple[str, ...] | list[str]) -> int:
    """Write vocab.json + merges.txt for a byte-level BPE that keeps `words` whole.

    Every single character is in the vocabulary, so any prompt tokenizes; each listed word gets
    the merges that build it left to right, so it becomes one token. Returns the vocab size.
    """
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    # Longest words first: their merges get the lowest ranks, so a short word ('an') cannot
    # split a long one ('handwritten') that contains it.
    for word in sorted(dict.fromkeys(w.lower() for w in words), key=len, reverse=True):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            line = f"{merged} {piece}"
            merged += piece
            if merged not in vocab:
                merges.append(line)
                vocab[merged] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def build_tokenizer(folder: Path, words: tuple[str, ...] = TINY_WORDS):
    from transformers import CLIPTokenizer

    write_clip_vocab(folder, words)
    return CLIPTokenizer.from_pretrained(
        str(folder), pad_token="<|endoftext|>", model_max_length=77
    )


def build_text_encoder(tokenizer, hidden_size: int = 32, layers: int = 5):
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_text_config(tokenizer, hidden_size, layers))


def clip_text_config(
    tokenizer, hidden_size: int = 32, layers: int = 5, heads: int = 4, intermediate: int = 37
):
    """A CLIP text config over our tokenizer: tiny by default, CLIP-L or bigG sized on demand."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )


def build_unet(sample_size: int = 16, cross_attention_dim: int = 32, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )


def build_tiny_sd_pipeline(seed: int = 0, image_size: int = 32):
    """A StableDiffusionPipeline with random weights, identical for the same seed."""
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    vae = build_vae()
    unet = build_unet(sample_size=image_size // 2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    text_encoder = build_text_encoder(tokenizer)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return assemble_sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def assemble_sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A StableDiffusionPipeline of our own components: no safety checker to load."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it as a diffusers folder, atomically."""
    return save_atomically(
        folder, lambda tmp: build_tiny_sd_pipeline(seed).save_pretrained(tmp), "model_index.json"
    )


# --- Tiny models for every family -------------------------------------------------------------
# Each builder seeds torch once and then builds in a fixed order, so a seed gives the same bytes;
# each saver writes through `save_atomically`, so a crash or a concurrent build never leaves a
# half-written folder where a loader would find it.


def save_atomically(folder: Path, write: Callable[[Path], object], done: str) -> Path:
    """Run `write(tmp)` on a temp folder beside `folder`, then rename it into place.

    `done` names the file whose presence marks a finished folder: if it is there, nothing is
    built. When a concurrent build wins the rename, its folder is kept and ours is dropped.
    """
    folder = Path(folder)
    if (folder / done).is_file():
        return folder
    from augment.progress import quiet_libraries

    quiet_libraries()  # no "Writing model shards" bar in the middle of a run's output
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        tmp.rename(folder)
    except OSError:
        if not (folder / done).is_file():  # not a concurrent build that won
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_sd_scheduler():
    """The DDIM settings of Stable Diffusion 1.x, as the tiny SD pipeline uses them."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd_inpaint_pipeline(seed: int = 0, image_size: int = 32):
    """A StableDiffusionInpaintPipeline whose UNet takes 9 channels, as real inpainting ones do.

    The extra 5 input channels are the mask and the masked image's latents, so this exercises the
    real inpainting path rather than the 4-channel latent-blending fallback.
    """
    from diffusers import StableDiffusionInpaintPipeline

    torch.manual_seed(seed)
    vae = build_vae()
    unet = build_unet(sample_size=image_size // 2, in_channels=9)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    text_encoder = build_text_encoder(tokenizer)
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_sd_inpaint(folder: Path, seed: int = 0) -> Path:
    """Save the tiny inpainting pipeline (9-channel UNet) as a diffusers folder, atomically."""
    return save_atomically(
        folder,
        lambda tmp: build_tiny_sd_inpaint_pipeline(seed).save_pretrained(tmp),
        "model_index.json",
    )


#: The SDXL UNet of diffusers' own tests: two text encoders of width 32 make cross-attention 64;
#: the added embedding is 6 time ids of 8 plus the pooled text embedding of 32.
SDXL_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=6 * 8 + 32,
    cross_attention_dim=64,
    norm_num_groups=32,
)


def build_sdxl_unet(sample_size: int = 16):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, **SDXL_UNET)


def build_text_encoder_with_projection(tokenizer, hidden_size: int = 32, layers: int = 5):
    """SDXL's second text encoder: its pooled, projected output feeds the UNet's added embedding."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(clip_text_config(tokenizer, hidden_size, layers))


def build_tiny_sdxl_pipeline(seed: int = 0, image_size: int = 32):
    """A StableDiffusionXLPipeline with random weights, identical for the same seed.

    Its folder also loads as the SDXL img2img and inpainting pipelines (a 4-channel UNet, which
    SDXL inpainting handles by blending latents), just as the real SDXL base does.
    """
    from diffusers import EulerDiscreteScheduler

    torch.manual_seed(seed)
    vae = build_vae()
    unet = build_sdxl_unet(sample_size=image_size // 2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp) / "one")
        tokenizer_2 = build_tokenizer(Path(tmp) / "two")
    text_encoder = build_text_encoder(tokenizer)
    text_encoder_2 = build_text_encoder_with_projection(tokenizer_2)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return assemble_sdxl_pipeline(
        vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler
    )


def assemble_sdxl_pipeline(
    vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler
):
    """A StableDiffusionXLPipeline of our own components."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,  # as the real SDXL base ships
    )


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Save the tiny SDXL pipeline as a diffusers folder, atomically."""
    return save_atomically(
        folder, lambda tmp: build_tiny_sdxl_pipeline(seed).save_pretrained(tmp), "model_index.json"
    )


def _wake_zero_convs(controlnet, conditioning_gain: float = 50.0) -> None:
    """Give ControlNet's zero-initialised convolutions random weights.

    A fresh ControlNet adds exactly zero to the UNet, so the conditioning image would change
    nothing. Default init makes it add something, but the random conditioning embedding comes out
    some 15x weaker than the latents it is added to; `conditioning_gain` on its last conv makes
    the conditioning image itself visibly change the rendered pixels.
    """
    convs = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
    for conv in convs + list(controlnet.controlnet_down_blocks):
        conv.reset_parameters()
    with torch.no_grad():
        controlnet.controlnet_cond_embedding.conv_out.weight.mul_(conditioning_gain)


def build_tiny_controlnet(seed: int = 0):
    """A ControlNetModel for the tiny SD UNet; its conditioning image is at full image size.

    conditioning_embedding_out_channels=(16, 32) downsamples once, by 2, as the tiny VAE does,
    so a 32 px conditioning image meets the 16 px latents.
    """
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
        conditioning_embedding_out_channels=(16, 32),
    )
    _wake_zero_convs(controlnet)
    return controlnet


def build_tiny_controlnet_sdxl(seed: int = 0):
    """A ControlNetModel for the tiny SDXL UNet (text_time added embedding, two encoders)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    unet_only = {"up_block_types"}  # a ControlNet has no up blocks
    config = {key: value for key, value in SDXL_UNET.items() if key not in unet_only}
    controlnet = ControlNetModel(
        in_channels=4, conditioning_embedding_out_channels=(16, 32), **config
    )
    _wake_zero_convs(controlnet)
    return controlnet


def save_tiny_controlnet(folder: Path, seed: int = 0) -> Path:
    """Save the tiny SD ControlNet (config.json + weights), atomically."""
    return save_atomically(
        folder, lambda tmp: build_tiny_controlnet(seed).save_pretrained(tmp), "config.json"
    )


def save_tiny_controlnet_sdxl(folder: Path, seed: int = 0) -> Path:
    """Save the tiny SDXL ControlNet (config.json + weights), atomically."""
    return save_atomically(
        folder, lambda tmp: build_tiny_controlnet_sdxl(seed).save_pretrained(tmp), "config.json"
    )


#: The same as `pipelines.LORA_TARGETS` and `pipelines.LORA_WEIGHTS_FILE`; written again here
#: because importing pipelines would close a cycle (pipelines -> config -> registry -> tiny).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def build_tiny_lora_state_dict(
    family: str = "sd", seed: int = 0, rank: int = 4, scale: float = 4.0
) -> dict[str, torch.Tensor]:
    """Random LoRA weights for the tiny SD ("sd") or SDXL ("sdxl") UNet, in diffusers' layout.

    peft's init_lora_weights=False draws both A and B at random (a trained LoRA's B is non-zero),
    and B is multiplied by `scale` so that loading the LoRA visibly changes a rendered image.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    builders = {"sd": build_unet, "sdxl": build_sdxl_unet}
    if family not in builders:
        raise ValueError(f"family must be one of {sorted(builders)}, not {family!r}")
    torch.manual_seed(seed)
    unet = builders[family]()
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


def save_tiny_lora(folder: Path, family: str = "sd", seed: int = 0, rank: int = 4) -> Path:
    """Save random LoRA weights for a tiny UNet as `pytorch_lora_weights.safetensors`, atomically.

    Written by the family's pipeline class (`save_lora_weights`), so `pipe.load_lora_weights`
    reads it exactly as it reads a LoRA from the Hub.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
    state = build_tiny_lora_state_dict(family, seed, rank)  # validates family first

    def write(tmp: Path) -> None:
        pipeline_class[family].save_lora_weights(tmp, unet_lora_layers=state)

    return save_atomically(folder, write, LORA_WEIGHTS)


def build_tiny_textual_inversion(
    token: str = "<digit-style>", hidden_size: int = 32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One random token embedding, `{token: (1, hidden_size)}`: the diffusers file layout."""
    generator = torch.Generator().manual_seed(seed)
    return {token: torch.randn(1, hidden_size, generator=generator)}


def _write_file_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Write one file through a temp name beside it, then rename: never half a file.

    Like `save_atomically`, an existing file counts as finished and is kept.
    """
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(name))
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return path


def save_tiny_textual_inversion(
    path: Path, token: str = "<digit-style>", hidden_size: int = 32, seed: int = 0
) -> Path:
    """Save a textual-inversion embedding for the tiny SD text encoder as safetensors.

    Loads with `pipe.load_textual_inversion(path, token=token)`.
    """
    from safetensors.torch import save_file

    state = build_tiny_textual_inversion(token, hidden_size, seed)
    return _write_file_atomically(path, lambda tmp: save_file(state, str(tmp)))


def save_tiny_textual_inversion_sdxl(
    path: Path, hidden_size: int = 32, hidden_size_2: int = 32, seed: int = 0
) -> Path:
    """Save an SDXL textual-inversion file: `clip_l` and `clip_g` embeddings, one token each.

    SDXL loads it twice, as diffusers documents: `pipe.load_textual_inversion(state["clip_l"],
    token=..., text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)`, then `clip_g` with
    text_encoder_2 and tokenizer_2.
    """
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {
        "clip_l": torch.randn(1, hidden_size, generator=generator),
        "clip_g": torch.randn(1, hidden_size_2, generator=generator),
    }
    return _write_file_atomically(path, lambda tmp: save_file(state, str(tmp)))


#: Layer sizes of the tiny CLIP towers (safety checker, CLIP scorer).
TINY_CLIP_LAYERS = dict(
    hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2
)

#: Side of the tiny safety checker's CLIP vision input: small, so checking costs nothing.
SAFETY_IMAGE_SIZE = 32


def build_tiny_safety_checker(flag_everything: bool = True, seed: int = 0):
    """A tiny StableDiffusionSafetyChecker and the CLIPImageProcessor that feeds it.

    The checker flags an image when cosine(image, concept) exceeds a concept's threshold
    (`concept_embeds_weights`). A cosine lies in [-1, 1], so a threshold of -2 flags every image
    and one of 2 flags none, whatever the random weights compute.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=99,
            max_position_embeddings=77,
            bos_token_id=0,  # the defaults (49406...) lie outside this tiny vocabulary
            eos_token_id=2,
            pad_token_id=1,
            **TINY_CLIP_LAYERS,
        ),
        vision_config=dict(
            image_size=SAFETY_IMAGE_SIZE, patch_size=4, num_channels=3, **TINY_CLIP_LAYERS
        ),
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    threshold = -2.0 if flag_everything else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": SAFETY_IMAGE_SIZE},
        crop_size={"height": SAFETY_IMAGE_SIZE, "width": SAFETY_IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return checker, feature_extractor


def save_tiny_sd_with_safety_checker(
    folder: Path, flag_everything: bool = True, seed: int = 0
) -> Path:
    """Save the tiny SD pipeline with a tiny safety checker that flags every image, or none.

    `requires_safety_checker` is True, so `StableDiffusionPipeline.from_pretrained(folder)` loads
    and runs the checker: flagged images come back black, with nsfw_content_detected True.
    """

    def write(tmp: Path) -> None:
        from diffusers import StableDiffusionPipeline

        components = build_tiny_sd_pipeline(seed).components
        checker, feature_extractor = build_tiny_safety_checker(flag_everything, seed)
        components.update(safety_checker=checker, feature_extractor=feature_extractor)
        StableDiffusionPipeline(**components, requires_safety_checker=True).save_pretrained(tmp)

    return save_atomically(folder, write, "model_index.json")


def build_tiny_clip(tokenizer, seed: int = 0, image_size: int = 32):
    """A tiny random CLIPModel over our tokenizer, and the CLIPImageProcessor that feeds it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=clip_text_config(tokenizer).to_dict(),
        vision_config=dict(image_size=image_size, patch_size=4, num_channels=3, **TINY_CLIP_LAYERS),
        projection_dim=32,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return CLIPModel(config).eval(), processor


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIP folder (model + tokenizer + image processor), as `filters.scorer` loads one."""

    def write(tmp: Path) -> None:
        from transformers import CLIPProcessor

        tokenizer = build_tokenizer(tmp / "vocab")
        model, image_processor = build_tiny_clip(tokenizer, seed)
        model.save_pretrained(tmp)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        shutil.rmtree(tmp / "vocab")

    return save_atomically(folder, write, "config.json")


def save_tiny_clip_family(
    folder: Path,
    seed: int,
    model_class,
    config_class,
    processor_class,
    image_processor,
    patch_size: int,
    **config,
) -> Path:
    """A tiny random model of CLIP's family (a CLIP text tower over our tokenizer, a 32 px
    vision tower) with its processor, saved as a transformers folder."""

    def write(tmp: Path) -> None:
        tokenizer = build_tokenizer(tmp / "vocab")
        torch.manual_seed(seed)
        vision = dict(image_size=32, patch_size=patch_size, num_channels=3, **TINY_CLIP_LAYERS)
        model_config = config_class(
            text_config=clip_text_config(tokenizer).to_dict(),
            vision_config=vision,
            projection_dim=32,
            **config,
        )
        model_class(model_config).eval().save_pretrained(tmp)
        processor_class(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        shutil.rmtree(tmp / "vocab")

    return save_atomically(folder, write, "config.json")


def save_tiny_clipseg(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIPSeg folder (model + processor), as `segment.model` loads one."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    image_processor = ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    return save_tiny_clip_family(
        folder,
        seed,
        CLIPSegForImageSegmentation,
        CLIPSegConfig,
        CLIPSegProcessor,
        image_processor,
        patch_size=4,
        reduce_dim=16,
        extract_layers=[1, 1, 1],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )


def save_tiny_sam(folder: Path, seed: int = 0) -> Path:
    """A tiny random SAM folder (model + processor) on 64 px inputs, as `segment.model` loads."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    def write(tmp: Path) -> None:
        torch.manual_seed(seed)
        config = SamConfig(
            vision_config=dict(
                hidden_size=32,
                output_channels=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=64,
                patch_size=8,
                mlp_dim=64,
                global_attn_indexes=[1],
                window_size=4,
                num_pos_feats=8,
            ),
            prompt_encoder_config=dict(
                hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4
            ),
            mask_decoder_config=dict(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_dim=32,
                iou_head_hidden_dim=16,
            ),
        )
        SamModel(config).eval().save_pretrained(tmp)
        image_processor = SamImageProcessor(
            size={"longest_edge": 64},
            pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16},
            mask_pad_size={"height": 16, "width": 16},
        )
        SamProcessor(image_processor=image_processor).save_pretrained(tmp)

    return save_atomically(folder, write, "config.json")


def save_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A tiny random OWLv2 folder (model + processor), as `labels.detector` loads one."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    image_processor = Owlv2ImageProcessor(size={"height": 32, "width": 32})
    return save_tiny_clip_family(
        folder,
        seed,
        Owlv2ForObjectDetection,
        Owlv2Config,
        Owlv2Processor,
        image_processor,
        patch_size=8,
    )


def save_tiny_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """A tiny random Grounding DINO folder (Swin + BERT, 77k parameters) with its processor."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    def write(tmp: Path) -> None:
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *TINY_WORDS]
        vocab = tmp / "vocab" / "vocab.txt"
        vocab.parent.mkdir()
        vocab.write_text("\n".join(dict.fromkeys(words)) + "\n")
        tokenizer = BertTokenizer(vocab=str(vocab))  # transformers 5: `vocab`, not vocab_file
        torch.manual_seed(seed)
        backbone = SwinConfig(
            image_size=64,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 1],
            window_size=4,
            out_features=["stage1", "stage2"],
        )
        text = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
        config = GroundingDinoConfig(
            backbone_config=backbone.to_dict(),
            text_config=text.to_dict(),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_queries=10,
            num_feature_levels=2,
            encoder_n_points=2,
            decoder_n_points=2,
            max_text_len=32,
            use_timm_backbone=False,
            use_pretrained_backbone=False,
        )
        GroundingDinoForObjectDetection(config).eval().save_pretrained(tmp)
        image_processor = GroundingDinoImageProcessor(
            size={"shortest_edge": 64, "longest_edge": 64}
        )
        GroundingDinoProcessor(
            image_processor=image_processor, tokenizer=tokenizer
        ).save_pretrained(tmp)
        shutil.rmtree(vocab.parent)

    return save_atomically(folder, write, "config.json")
