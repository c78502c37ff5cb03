"""Tiny random Stable Diffusion components, built in code.

No weights can be downloaded in tests or on a first run, so these build real diffusers
components (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, a scheduler) small
enough to render on a CPU in seconds. They are saved with `save_pretrained` and loaded back with
`from_pretrained`: the same path a real Stable Diffusion folder takes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

#: Words the tiny tokenizer keeps whole; any other text still tokenizes, letter by letter.
TINY_WORDS = tuple(
    (
        "a an the of in on with and photo picture image drawing handwritten digit number "
        "zero one two three four five six seven eight nine white black background"
    ).split()
)


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
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )
    return CLIPTextModel(config)


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
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build_tiny_sd_pipeline(seed).save_pretrained(tmp)
        tmp.rename(folder)
    except OSError:
        if not (folder / "model_index.json").is_file():  # not a concurrent build that won
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
