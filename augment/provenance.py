"""Provenance that travels with every image: what made it, from which model, that it is synthetic.

A record in a shard knows the model, seed and settings; a PNG copied out of an export used to
know nothing. Every PNG the engine writes now carries two text chunks:

- `parameters`, the Stable Diffusion web UI's convention (prompt, negative prompt, steps,
  sampler, CFG scale, seed, size, model, model hash), which existing tools already read;
- `augment`, a JSON object: item id, job, the hash of the settings that shape the pixels
  (`settings_hash`; the run's spec hash is in its manifest), the model's content hash, its
  licence, the augment version and ``"synthetic": true``.

Both hold only what decides the pixels or names their origin (no time, no path of this
machine, no setting such as the batch size, the filter or the distributor), so the same item
renders the same bytes in any run, worker or front end. The model's content hash is a sha256
over its weight files, cached by size and modification time so a large model is read once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

#: Files whose bytes decide a model's outputs (configs are small and hashed too).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model")
#: A single-file model's `generation.config` folder: only its configs and tokenizer files load.
CONFIG_SUFFIXES = (".json", ".txt", ".model")
#: The text chunks a PNG carries.
PARAMETERS_KEY = "parameters"
AUGMENT_KEY = "augment"
#: The invisible watermark (`generation.watermark`): the 48 bits diffusers' SDXL pipelines
#: embed, written with the `invisible-watermark` package's dwtDctSvd method, which survives a
#: JPEG re-encode at quality 90 (its dwtDct, diffusers' choice, did not in our check). Found:
#: at least WATERMARK_MATCH of the bits read back; images under WATERMARK_MIN_SIZE px are
#: refused.
WATERMARK_BITS = [int(bit) for bit in f"{0b101100111110110010010000011110111011000110011110:048b}"]
WATERMARK_METHOD = "dwtDctSvd"
WATERMARK_MATCH = 44
WATERMARK_MIN_SIZE = 256


@dataclass(frozen=True)
class Adapter:
    """A file or folder loaded beside the model that shapes its pixels, by content hash."""

    kind: str  # "vae", "controlnet", "lora", "textual_inversion" or "finetune" (the job's own)
    name: str  # as the spec names it
    hash: str | None


@dataclass(frozen=True)
class Provenance:
    """What every image of a run shares: the job, its spec hash, the model's identity and the
    adapters loaded with it (two LoRAs of one name are told apart by their hashes)."""

    job: str
    settings_hash: str  # of the generation settings that shape the pixels (a record's `settings`)
    model: str
    model_hash: str | None
    license: str | None
    version: str
    watermark: bool = False
    adapters: tuple[Adapter, ...] = ()


def augment_version() -> str:
    try:
        return metadata.version("augment")
    except metadata.PackageNotFoundError:
        return "unknown"


#: What a fine-tune writes beside the weights (its card, with timings, and its resumable
#: checkpoints): two trainings to the same weights must hash alike.
TRAINING_RECORDS = ("finetune.json", "checkpoints")


def model_files(location: Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> list[Path]:
    """The files hashed for a model: the file itself, or every weight and config file under a
    folder (hidden files and folders, such as a cache, and training records left out)."""
    if location.is_file():
        return [location]
    found = []
    # os.walk follows linked folders, as the pipeline's loader does: rglob did not, so a
    # `unet/` linked from elsewhere was left out of the hash, and two models of other UNets
    # shared one
    for folder, subfolders, files in os.walk(location, followlinks=True):
        subfolders[:] = [
            d for d in subfolders if not d.startswith(".") and d not in TRAINING_RECORDS
        ]
        for name in files:
            path = Path(folder) / name
            if (
                path.suffix in suffixes
                and not name.startswith(".")
                and name not in TRAINING_RECORDS
                and path.is_file()
            ):
                found.append(path)
    return sorted(found)


def model_content_hash(
    location: str | Path, cache: Path | None = None, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES
) -> str | None:
    """sha256 over a model's files (relative name and bytes, in name order); None for a model
    that is not a local file or folder. Cached in `cache` (default: the augment cache) by each
    file's size and modification time."""
    from augment.cache import cache_dir

    location = Path(location)
    if not location.exists():
        return None
    files = model_files(location, suffixes)
    if not files:
        return None
    cache = cache or cache_dir() / "model-hashes.json"
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    known = read_cache(cache)
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    root = location if location.is_dir() else location.parent
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()
    known[key] = value
    write_cache(cache, known)
    return value


def read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_cache(path: Path, known: dict) -> None:
    """Write the hash cache atomically (workers on one node may write it at once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(path)
    except OSError:  # a read-only cache only costs the next run a re-hash
        pass


def model_license(location: str | Path, given: str | None = None) -> str | None:
    """The licence `given` in the spec, else the one the model card's front matter names."""
    if given:
        return given
    card = Path(location) / "README.md"
    if not card.is_file():
        return None
    lines = card.read_text(errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def adapter_kind(adapter: Adapter) -> tuple[str, str]:
    """What an adapter is and its name: the job's own fine-tune ("lora:FILE") is a LoRA or an
    embedding like any other."""
    if adapter.kind == "finetune":
        method, _, file = adapter.name.partition(":")
        return method, file
    return adapter.kind, adapter.name


def parameters_text(record: dict, provenance: Provenance) -> str:
    """The web UI's `parameters` text: prompt, negative prompt, then the settings line."""
    settings = [
        f"Steps: {record['steps']}",
        f"Sampler: {record['scheduler']}",
        f"CFG scale: {record['guidance']:g}",
        f"Seed: {record['seed']}",
        f"Size: {record['width']}x{record['height']}",
        f"Model: {provenance.model}",
    ]
    if provenance.model_hash:
        settings.append(f"Model hash: {provenance.model_hash[:10]}")
    for vae in (a for a in provenance.adapters if a.kind == "vae"):
        if vae.hash:
            settings.append(f"VAE hash: {vae.hash[:10]}")
        settings.append(f"VAE: {Path(vae.name).name}")
    for kind, label in (("lora", "Lora hashes"), ("textual_inversion", "TI hashes")):
        named = [
            f"{Path(name).stem}: {(a.hash or 'unknown')[:10]}"
            for a in provenance.adapters
            for method, name in [adapter_kind(a)]
            if method == kind
        ]
        if named:
            settings.append(f'{label}: "{", ".join(named)}"')
    if record.get("strength") is not None:
        settings.append(f"Denoising strength: {record['strength']:g}")
    lines = [record["prompt"] or ""]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def augment_text(item_id: str, provenance: Provenance, **more) -> str:
    """The `augment` chunk: this image's id, what every image of the run shares, and `more`."""
    shared = asdict(provenance)
    return json.dumps({"item_id": item_id, **shared, "synthetic": True, **more}, sort_keys=True)


def composite_chunks(
    item_id: str, provenance: Provenance, background: str, instances: list[str]
) -> dict[str, str]:
    """A pasted canvas's `augment` chunk: a real background (by id) with generated
    instances (their item ids) pasted on; synthetic in part, and it says so."""
    composite = {"background": background, "pasted": instances}
    return {AUGMENT_KEY: augment_text(item_id, provenance, composite=composite)}


def png_chunks(record: dict, provenance: Provenance) -> dict[str, str]:
    return {
        PARAMETERS_KEY: parameters_text(record, provenance),
        AUGMENT_KEY: augment_text(record["item_id"], provenance),
    }


def add_watermark(pixels: np.ndarray) -> np.ndarray:
    """The image (RGB uint8) with the invisible watermark in it."""
    import cv2
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    marked = encoder.encode(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), WATERMARK_METHOD)
    return np.ascontiguousarray(cv2.cvtColor(marked, cv2.COLOR_BGR2RGB))


def has_watermark(pixels: np.ndarray) -> bool:
    """Whether the invisible watermark reads back from an RGB uint8 image (never in one too
    small to hold it)."""
    import cv2
    from imwatermark import WatermarkDecoder

    if min(pixels.shape[:2]) < WATERMARK_MIN_SIZE:
        return False
    decoder = WatermarkDecoder("bits", len(WATERMARK_BITS))
    read = decoder.decode(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), WATERMARK_METHOD)
    return sum(int(a) == b for a, b in zip(read, WATERMARK_BITS, strict=True)) >= WATERMARK_MATCH


def read_png_chunks(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG's bytes."""
    return decode_image(data)[0]


def decode_image(data: bytes) -> tuple[dict[str, str], np.ndarray]:
    """An image file's text chunks (none for formats without them) and RGB pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        chunks = {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
        return chunks, np.asarray(image.convert("RGB"))


def inspect_png(path: str | Path) -> dict:
    """What an image file says of itself: its `parameters` text and `augment` JSON (None where
    absent, as after a JPEG re-encode), and whether the invisible watermark reads back."""
    from augment.errors import AugmentError, first_line

    path = Path(path)
    if path.is_dir():
        raise AugmentError(
            f"{path} is a folder; give image files, such as a run's exported PNGs "
            "(OUT/coco/images/*.png)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AugmentError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        chunks, pixels = decode_image(data)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says, it is no image
        kind = type(exc).__name__  # an opener another library registered may raise an
        # ImportError for a file no plugin knows (ultralytics' HEIF opener does)
        unknown = kind == "UnidentifiedImageError" or isinstance(exc, ImportError)
        reason = "no image format it knows" if unknown else kind
        if kind == "DecompressionBombError":  # a real image, larger than PIL's guard
            reason = first_line(exc).rstrip(".")
        raise AugmentError(
            f"{path}: cannot read it as an image ({reason}); give a PNG file"
        ) from exc
    carried = chunks.get(AUGMENT_KEY)
    try:
        parsed = json.loads(carried) if carried else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):  # a chunk of that name that another tool wrote
        parsed = None
    return {
        "file": str(path),
        "parameters": chunks.get(PARAMETERS_KEY),
        "augment": parsed,
        "synthetic": bool(parsed and parsed.get("synthetic") is True),  # not "false"
        "watermark": has_watermark(pixels),
        # a chunk of augment's name that holds no JSON object: damaged, or another tool's
        "unread_augment": bool(carried) and parsed is None,
    }


def settings_hash(settings_json: str) -> str:
    return hashlib.sha256(settings_json.encode()).hexdigest()[:16]
