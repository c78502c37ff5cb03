"""Render work items into records, one generator class per mode.

A generator loads its diffusers pipeline once in ``__init__`` and renders a list of work items
in ``__call__``, so the same object runs alone in a test or as a Ray actor. Each image gets its
own CPU ``torch.Generator`` seeded from its work item: an item renders the same image whatever
batch or worker it lands in. Modes differ only in the inputs they give the pipeline
(`inputs`): a prompt, a source image, a mask, a Canny edge map, or interpolated latents and
text embeddings.

Every output is checked: NaN or all-black images are rendered once more in float32 when the
pipeline runs in a lower precision, and the safety checker's verdict (when the model has one)
becomes the `nsfw` flag. Nothing is dropped: each fact is a column of the record.

The device stays busy: images become uint8 and are checked where they were rendered (the GPU,
when there is one), only uint8 crosses to the CPU, and PNG encoding runs on a few threads
(`encode_threads`) while the next batch renders (`RecordQueue`).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from augment.config import MODE_SETTINGS, GenerationSpec, JobSpec, SpecPaths
from augment.duplicates import grey_levels, levels_hash
from augment.errors import ModelError
from augment.generate.cuda_graphs import eager_forwards
from augment.provenance import (
    CONFIG_SUFFIXES,
    Adapter,
    Provenance,
    add_watermark,
    augment_version,
    model_content_hash,
    model_license,
    png_chunks,
    settings_hash,
)
from augment.records import WorkItem
from augment.sources import SourceSet

log = logging.getLogger(__name__)

#: An image whose brightest pixel is at most this (0..255) counts as black.
BLACK_MAX_VALUE = 4

#: Settings that do not change the pixels, left out of a record's `settings` column.
NOT_RENDER_SETTINGS = {
    "device",
    "batch_size",
    "cuda_graphs",
    "compile",
    "compile_vae",
    "compile_mode",
    "compile_cache",
    "vae_slicing",
    "vae_tiling",
    "encode_threads",
    "license",
}

#: `batch_size: auto`: the sizes tried on a GPU, smallest first (the largest that fits wins),
#: the share of the GPU's memory a trial may peak at (headroom for longer prompts), and the
#: size used on a CPU, where memory is not what limits a batch.
AUTO_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
AUTO_MEMORY_SHARE = 0.9
AUTO_CPU_BATCH = 8


def negative_prompts(items: list[WorkItem]) -> list[str] | None:
    """The batch's negative prompts; None where every one is empty, as the pipelines mean "no
    negative prompt": SDXL then guides from zeros (its `force_zeros_for_empty_prompt`), where
    [""] gave it the empty text's embedding and other images. SD 1.x/2.x encode "" either way."""
    negatives = [item.negative_prompt for item in items]
    return None if not any(negatives) else negatives


def render_settings_json(settings: GenerationSpec) -> str:
    """The settings that shape the pixels, as a record's `settings` column holds them."""
    unused = {key for key, modes in MODE_SETTINGS.items() if settings.mode not in modes}
    render = settings.model_dump(mode="json", exclude=NOT_RENDER_SETTINGS | unused)
    return json.dumps(render, sort_keys=True)


def largest_batch(fits: Callable[[int], bool], sizes: tuple[int, ...] = AUTO_BATCH_SIZES) -> int:
    """The largest of `sizes` that `fits`, trying them in order and stopping at the first that
    does not (memory grows with the batch)."""
    best = 0
    for size in sizes:
        if not fits(size):
            break
        best = size
    if not best:
        raise ModelError(
            f"generation.batch_size auto: not even a batch of {sizes[0]} fits on this device; "
            "lower height/width, use dtype float16, or set vae_slicing/vae_tiling"
        )
    return best


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_png(pixels: np.ndarray, chunks: dict[str, str] | None = None) -> bytes:
    """PNG bytes, with `chunks` as text chunks (provenance: `augment.provenance`)."""
    info = None
    if chunks:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in chunks.items():
            info.add_text(key, value)  # iTXt where latin-1 cannot hold the text
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def to_uint8(images) -> tuple[list[np.ndarray], list[bool], list[bool]]:
    """A batch of float [0, 1] NCHW images, on their device -> uint8 HWC arrays on the CPU,
    whether each held NaNs (set to 0) and whether each is black.

    The arithmetic is float32 whatever the pipeline's dtype (NaN -> 0, clip, x255, round half
    to even), so a GPU and a CPU give the same bytes; only uint8 crosses to the CPU.
    """
    import torch

    images = images.permute(0, 2, 3, 1).float()
    nans = torch.isnan(images).flatten(1).any(1)
    pixels = torch.nan_to_num(images, nan=0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    black = pixels.flatten(1).amax(1) <= BLACK_MAX_VALUE
    return list(pixels.cpu().numpy()), nans.cpu().tolist(), black.cpu().tolist()


@dataclass
class Rendered:
    """One rendered batch, before encoding: uint8 pixels and what the checks found."""

    items: list[WorkItem]
    pixels: list[np.ndarray]
    nans: list[bool]
    black: list[bool]
    nsfw: list[bool]
    retried: list[bool]
    seconds_per_image: float


def encode_image(
    pixels: np.ndarray, chunks: dict[str, str] | None, watermark: bool = False
) -> tuple[bytes, int, bytes]:
    """An image's PNG bytes, perceptual hash and grey thumbnail (after the invisible
    watermark, when asked): the CPU work beside the render loop."""
    if watermark:
        pixels = add_watermark(pixels)
    levels = grey_levels(pixels)
    return encode_png(pixels, chunks), levels_hash(levels), levels.tobytes()


def with_image(record: dict, encoded: tuple[bytes, int, bytes]) -> dict:
    """The record with its PNG bytes, perceptual hash and thumbnail (`encode_image`)."""
    png, phash, thumb = encoded
    record["image"] = {"bytes": png, "path": f"{record['item_id']}.png"}
    record["phash"] = phash
    record["thumb"] = thumb
    return record


class RecordQueue:
    """Rendered batches in, records out, in the order they went in.

    With a pool of threads, a batch's images are PNG-encoded there, one task per image (the
    last batch's encoding, which nothing overlaps, is shared out too), while the caller renders
    the next batch; at most `limit` batches wait, so memory stays flat. Without one, each batch
    is encoded at once. The records are the same either way.
    """

    def __init__(self, generator: Generator, pool: ThreadPoolExecutor | None, limit: int):
        self.generator = generator
        self.pool = pool
        self.limit = max(1, limit)
        self.pending: deque[tuple[list[dict], list[Future]] | list[dict]] = deque()
        self.records: list[dict] = []

    def add(self, rendered: Rendered) -> None:
        records = self.generator.records(rendered)
        work = [
            self.generator.encoding(record, pixels)
            for record, pixels in zip(records, rendered.pixels, strict=True)
        ]
        if self.pool is None:
            self.records.extend(map(with_image, records, (encode_image(*w) for w in work)))
            return
        self.pending.append((records, [self.pool.submit(encode_image, *w) for w in work]))
        while len(self.pending) > self.limit:
            self.take_oldest()

    def add_records(self, records: list[dict]) -> None:
        """Records made elsewhere (an item rendered alone), kept in their place in the order."""
        if self.pending:
            self.pending.append(records)
        else:
            self.records.extend(records)

    def take_oldest(self) -> None:
        done = self.pending.popleft()
        if isinstance(done, list):
            self.records.extend(done)
        else:
            records, encoding = done
            self.records.extend(map(with_image, records, (f.result() for f in encoding)))

    def finish(self) -> list[dict]:
        """Every record, once each waiting batch is encoded."""
        try:
            while self.pending:
                self.take_oldest()
        finally:  # after an error, drop the encoding nobody will collect
            for waiting in self.pending:
                for future in [] if isinstance(waiting, list) else waiting[1]:
                    future.cancel()
        return self.records


def slerp(a, b, t: float, dot_threshold: float = 0.9995):
    """Spherical interpolation between two tensors seen as vectors (linear when nearly parallel)."""
    import torch

    a32, b32 = a.double().flatten(), b.double().flatten()
    dot = torch.dot(a32 / a32.norm(), b32 / b32.norm()).clamp(-1, 1)
    if dot.abs() > dot_threshold:
        mixed = (1 - t) * a32 + t * b32
    else:
        theta = torch.arccos(dot)
        mixed = (torch.sin((1 - t) * theta) * a32 + torch.sin(t * theta) * b32) / torch.sin(theta)
    return mixed.reshape(a.shape).to(a.dtype)


def canny_edges(image: Image.Image, low: int, high: int) -> Image.Image:
    """ControlNet's Canny conditioning: white edges on black, three channels."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


class Generator:
    """Shared by every mode: loading, batching, seeding, output checks and records."""

    mode = "txt2img"

    def __init__(
        self,
        settings: GenerationSpec,
        paths: SpecPaths,
        sources: SourceSet | None = None,
        provenance: Provenance | None = None,
    ):
        from augment.generate.pipelines import load_pipeline

        self.settings = settings
        self.provenance = provenance  # what each PNG says of itself (None: nothing)
        self.pipe = load_pipeline(settings, paths)
        self.compiled = False
        self.chosen_batch: int | None = None  # the batch size, once known (auto: probed)
        self.encoder: ThreadPoolExecutor | None = None  # made on first use
        self.sources = sources
        self.mask_files = paths.mask_files
        self.settings_json = render_settings_json(settings)

    def __call__(self, items: list[WorkItem]) -> list[dict]:
        """Records for the items, batch by batch (encoding overlaps the next batch)."""
        if not items:
            return []
        queue = self.record_queue()
        for batch in batches(items, self.batch_size(items[0])):
            for rendered in self.render_items(batch):
                queue.add(rendered)
        return queue.finish()

    def record_queue(self) -> RecordQueue:
        """A queue over this generator's encoding threads (made once, kept for every block)."""
        return RecordQueue(self, self.encoding_pool(), self.settings.encode_threads)

    def encoding_pool(self) -> ThreadPoolExecutor | None:
        threads = self.settings.encode_threads
        if self.encoder is None and threads:
            self.encoder = ThreadPoolExecutor(threads, "encode")
        return self.encoder

    def with_settings(self, settings: GenerationSpec) -> Generator:
        """This generator, its loaded pipeline and encoding threads, rendering other settings
        that a pipeline call takes (steps, guidance, size): a served request's overrides. Its
        records and provenance chunks name the settings it rendered with."""
        self.encoding_pool()  # made before the copy, so that both share it
        view = copy.copy(self)
        view.chosen_batch = self.batch_at(settings)
        view.settings = settings
        view.settings_json = render_settings_json(settings)
        if self.provenance is not None:
            hashed = settings_hash(view.settings_json)
            view.provenance = dataclasses.replace(self.provenance, settings_hash=hashed)
        return view

    def batch_at(self, settings: GenerationSpec) -> int | None:
        """This generator's batch, shrunk for `settings`' larger images by their pixels: a batch
        chosen (or measured, `auto`) at 512 px holds four times the memory at 1024 px. None
        where `auto` has not measured yet: then it measures at the new size."""
        base = self.chosen_batch
        if base is None and isinstance(self.settings.batch_size, int):
            base = self.settings.batch_size
        area, own = settings.height * settings.width, self.settings.height * self.settings.width
        if base is None or area <= own:
            return base
        return max(1, base * own // area)

    def batch_size(self, item: WorkItem) -> int:
        """The spec's batch size; for `auto`, found once, on the first item's inputs."""
        if self.chosen_batch is None:
            size = self.settings.batch_size
            self.chosen_batch = size if isinstance(size, int) else self.auto_batch_size(item)
        return self.chosen_batch

    def auto_batch_size(self, item: WorkItem) -> int:
        """The largest batch of AUTO_BATCH_SIZES whose render (two denoising steps: memory does
        not grow with steps) peaks under AUTO_MEMORY_SHARE of the GPU's memory."""
        import torch

        if self.pipe.device.type != "cuda":
            return AUTO_CPU_BATCH
        total = torch.cuda.get_device_properties(self.pipe.device).total_memory
        steps = max(2, math.ceil(1 / self.settings.strength))  # img2img keeps >= 1 step

        def fits(size: int) -> bool:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.pipe.device)
            try:
                with eager_forwards(self.pipe.unet):  # a graph per probed size: memory held
                    self.render([item] * size, steps)
            except torch.OutOfMemoryError:
                return False
            finally:
                torch.cuda.empty_cache()
            return torch.cuda.max_memory_allocated(self.pipe.device) <= AUTO_MEMORY_SHARE * total

        size = largest_batch(fits)
        log.warning("batch_size auto: %d images per call on %s", size, self.pipe.device)
        return size

    def render_items(self, items: list[WorkItem]) -> list[Rendered]:
        """One batch's images on the CPU as uint8, one render call per image size."""
        return [self.render_batch(group) for group in self.same_size_groups(items)]

    def size_of(self, item: WorkItem) -> tuple[int, int]:
        return (item.width or self.settings.width, item.height or self.settings.height)

    def same_size_groups(self, items: list[WorkItem]) -> list[list[WorkItem]]:
        """A batch is one tensor: source images of other sizes render in their own call."""
        groups: dict[tuple[int, int], list[WorkItem]] = {}
        for item in items:
            groups.setdefault(self.size_of(item), []).append(item)
        return list(groups.values())

    def inputs(self, items: list[WorkItem]) -> dict:
        """The mode's pipeline arguments for a batch of same-size items."""
        width, height = self.size_of(items[0])
        return {
            "prompt": [item.prompt for item in items],
            "negative_prompt": negative_prompts(items),
            "height": height,
            "width": width,
        }

    def render(self, items: list[WorkItem], steps: int | None = None) -> tuple:
        """Float images in [0, 1] (NCHW, on the pipeline's device) and the safety checker's
        verdicts.

        A lone item renders beside a copy of itself: with a batch of one, torch takes other
        kernels for some products (matrix-vector on a CPU), whose last bits differ, and an item
        must give the same bytes alone (a retry, a short last batch, a served request) as in a
        batch.
        """
        import torch

        if len(items) == 1:
            images, nsfw = self.render(items * 2, steps)
            return images[:1], nsfw[:1]
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
        started = time.perf_counter()
        output = self.pipe(
            **self.inputs(items),
            num_inference_steps=steps or self.settings.num_inference_steps,
            guidance_scale=self.settings.guidance_scale,
            generator=generators,
            output_type="pt",
        )
        compiles = self.settings.compile or self.settings.compile_vae
        if compiles and not self.compiled:  # the first call compiles: say so
            self.compiled = True
            log.warning(
                "torch.compile: the first batch took %.1f s (compiling, or loading the compiled "
                "kernels from the cache)",
                time.perf_counter() - started,
            )
        nsfw = getattr(output, "nsfw_content_detected", None) or [False] * len(items)
        return output.images, [bool(flag) for flag in nsfw]

    @contextmanager
    def in_float32(self):
        """The pipeline in float32 for a re-render, then back (float16 -> 32 -> 16 is exact),
        its UNet eager meanwhile: a CUDA graph captured for one re-render would be dropped when
        the weights go back."""
        import torch

        dtype = self.pipe.dtype
        self.pipe.to(dtype=torch.float32)
        try:
            with eager_forwards(self.pipe.unet):
                yield
        finally:
            self.pipe.to(dtype=dtype)

    def render_batch(self, items: list[WorkItem]) -> Rendered:
        """Same-size items rendered and checked; NaN or black ones again in float32."""
        import torch

        started = time.perf_counter()
        images, nsfw = self.render(items)
        pixels, nans, black = to_uint8(images)
        bad = [i for i in range(len(items)) if (nans[i] or black[i]) and not nsfw[i]]
        retried = [False] * len(items)
        if bad and self.pipe.dtype != torch.float32:
            with self.in_float32():
                again, _ = self.render([items[i] for i in bad])
            for i, image, has_nan, is_dark in zip(bad, *to_uint8(again), strict=True):
                pixels[i], nans[i], black[i], retried[i] = image, has_nan, is_dark, True
        seconds_per_image = (time.perf_counter() - started) / len(items)
        return Rendered(items, pixels, nans, black, nsfw, retried, seconds_per_image)

    def records(self, rendered: Rendered) -> list[dict]:
        """A rendered batch's records, their image and hash left to `encoding` (CPU work that
        may run on another thread)."""
        r = rendered
        return [
            self.make_record(
                item,
                r.pixels[i],
                r.nans[i],
                r.black[i],
                r.nsfw[i],
                r.retried[i],
                r.seconds_per_image,
            )
            for i, item in enumerate(r.items)
        ]

    def encoding(self, record: dict, pixels: np.ndarray) -> tuple:
        """`encode_image`'s arguments for a record: its pixels, the provenance chunks read off
        the record (None without a provenance) and whether to watermark."""
        chunks = None if self.provenance is None else png_chunks(record, self.provenance)
        return pixels, chunks, self.settings.watermark

    def make_record(
        self,
        item: WorkItem,
        pixels: np.ndarray,
        has_nan: bool,
        black: bool,
        nsfw: bool,
        float32_retry: bool,
        render_s: float,
    ) -> dict:
        s = self.settings
        return {
            "item_id": item.item_id,
            "concept_id": item.concept_id,
            "concept_name": item.concept_name,
            "synset": item.synset,
            "category_id": item.category_id,
            "prompt": item.prompt,
            "negative_prompt": item.negative_prompt,
            "mode": self.mode,
            "model": s.model,
            "model_hash": self.provenance.model_hash if self.provenance else None,
            "license": self.provenance.license if self.provenance else None,
            "watermark": s.watermark,
            "family": self.pipe.family,
            "dtype": s.dtype,
            "scheduler": s.scheduler,
            "steps": s.num_inference_steps,
            "guidance": s.guidance_scale,
            "strength": s.strength if self.mode in MODE_SETTINGS["strength"] else None,
            "settings": self.settings_json,
            "seed": item.seed,
            "width": pixels.shape[1],
            "height": pixels.shape[0],
            "source_image_id": item.source_image_id,
            "target": item.target,
            "boxes": list(item.boxes or []),
            "sequence_id": item.sequence_id,
            "frame": item.frame,
            "prompt_b": item.prompt_b,
            "image": None,  # with_image: once encoded
            "clip_score": None,
            "concept_score": None,
            "scored_as": None,
            "embedding": None,
            "phash": None,  # with_image
            "thumb": None,  # with_image
            "black": black,
            "nan": has_nan,
            "nsfw": nsfw,
            "float32_retry": float32_retry,
            "filtered": False,
            "duplicate": False,
            "duplicate_of": None,
            "mask_area": None,
            "bad_mask": False,
            "not_found": False,
            "render_s": render_s,
        }


class Txt2ImgGenerator(Generator):
    """Text to image: the prompt alone."""

    mode = "txt2img"


class SourceGenerator(Generator):
    """Modes that start from a source image, resized to the item's render size."""

    def source_image(self, item: WorkItem) -> Image.Image:
        image = self.sources.pixels(item.source_image_id)
        return image.resize(self.size_of(item), Image.BICUBIC)


class Img2ImgGenerator(SourceGenerator):
    """Image to image: the source, noised to `strength`, then denoised toward the prompt."""

    mode = "img2img"

    def inputs(self, items: list[WorkItem]) -> dict:
        return {
            "prompt": [item.prompt for item in items],
            "negative_prompt": negative_prompts(items),
            "image": [self.source_image(item) for item in items],
            "strength": self.settings.strength,
        }


class InpaintGenerator(SourceGenerator):
    """Inpainting: repaint inside a mask (boxes grown by a margin, or a mask file)."""

    mode = "inpaint"

    def mask(self, item: WorkItem) -> Image.Image:
        from augment.labels import box_mask

        spec, size = self.settings.mask, self.size_of(item)
        if spec.source == "files":
            mask = self.sources.mask(self.mask_files, item.source_image_id)
            return mask.resize(size, Image.NEAREST)
        kind, _, which = (item.target or "").partition(":")
        boxes = item.boxes or []
        if kind == "box":
            chosen = [boxes[int(which)]["bbox"]]
        else:
            category = item.category_id
            chosen = [b["bbox"] for b in boxes if b["category_id"] == category]
        return box_mask(chosen, size, spec.margin)

    def inputs(self, items: list[WorkItem]) -> dict:
        return {
            **super().inputs(items),
            "image": [self.source_image(item) for item in items],
            "mask_image": [self.mask(item) for item in items],
            "strength": self.settings.strength,
        }


class ControlNetGenerator(SourceGenerator):
    """ControlNet: the prompt, guided by Canny edges of the source image."""

    mode = "controlnet"

    def inputs(self, items: list[WorkItem]) -> dict:
        control = self.settings.controlnet
        return {
            **super().inputs(items),
            "image": [
                canny_edges(self.source_image(item), control.low_threshold, control.high_threshold)
                for item in items
            ],
            "controlnet_conditioning_scale": control.scale,
        }


class InterpolateGenerator(Generator):
    """Frames between two prompts and/or two seeds: slerp of start noise and text embeddings."""

    mode = "interpolate"

    def noise(self, seed: int, width: int, height: int):
        import torch

        factor = self.pipe.vae_scale_factor
        shape = (1, self.pipe.unet.config.in_channels, height // factor, width // factor)
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))

    def encode(self, prompts: list[str], negatives: list[str] | None) -> list:
        """Text embeddings as the pipeline makes them: SD gives 2 tensors, SDXL 4."""
        import torch

        with torch.no_grad():
            encoded = self.pipe.encode_prompt(
                prompt=prompts,
                device=self.pipe.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=self.settings.guidance_scale > 1,
                negative_prompt=negatives,
            )
        return list(encoded)

    def inputs(self, items: list[WorkItem]) -> dict:
        import torch

        width, height = self.size_of(items[0])
        negatives = negative_prompts(items)
        starts = self.encode([item.prompt for item in items], negatives)
        end_prompts = [item.prompt_b or item.prompt for item in items]
        same = end_prompts == [item.prompt for item in items]  # between seeds only
        ends = starts if same else self.encode(end_prompts, negatives)
        mixed: list[list] = [[] for _ in starts]
        latents = []
        for row, item in enumerate(items):
            t = item.frame / (item.frames - 1) if item.frames and item.frames > 1 else 0.0
            for part, (a, b) in enumerate(zip(starts, ends, strict=True)):
                mixed[part].append(None if a is None else slerp(a[row], b[row], t))
            noise_a = self.noise(item.seed, width, height)
            noise_b = self.noise(
                item.seed_b if item.seed_b is not None else item.seed, width, height
            )
            latents.append(slerp(noise_a, noise_b, t))
        stacked = [None if parts[0] is None else torch.stack(parts) for parts in mixed]
        names = ["prompt_embeds", "negative_prompt_embeds"]
        if len(stacked) == 4:
            names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        arguments = {
            name: value for name, value in zip(names, stacked, strict=True) if value is not None
        }
        dtype = self.pipe.unet.dtype
        arguments["latents"] = torch.cat(latents).to(self.pipe.device, dtype)
        arguments.update(height=height, width=width)
        return arguments


GENERATORS: dict[str, type[Generator]] = {
    cls.mode: cls
    for cls in (
        Txt2ImgGenerator,
        Img2ImgGenerator,
        InpaintGenerator,
        ControlNetGenerator,
        InterpolateGenerator,
    )
}


def make_generator(spec: JobSpec) -> Generator:
    """The generator for the spec's mode, with its source images when the mode has some, and
    the run's provenance for every PNG it writes."""
    sources = SourceSet.of(spec) if spec.source is not None else None
    generator = GENERATORS[spec.generation.mode]
    return generator(spec.generation, spec.paths, sources, run_provenance(spec))


def run_provenance(spec: JobSpec) -> Provenance:
    """The job, the hash of its pixel-shaping settings, the model's identity (content hash and
    licence: a DreamBooth fine-tune's own folder, which is what renders) and the adapters
    loaded with it (`loaded_adapters`)."""
    from augment.generate.pipelines import hub_snapshot, read_adapter_card, rendering_paths

    paths, generation = spec.paths, spec.generation
    card = read_adapter_card(paths.finetuned) if paths.finetuned else None
    location = rendering_paths(paths, card).model
    if not Path(location).exists():  # a cached hub model: its snapshot's files, as a folder's
        location = hub_snapshot(location) or location
    return Provenance(
        job=spec.name,
        settings_hash=settings_hash(render_settings_json(generation)),
        model=generation.model,
        model_hash=model_content_hash(location),
        license=model_license(location, generation.license),
        version=augment_version(),
        watermark=generation.watermark,
        adapters=loaded_adapters(spec, card),
    )


def loaded_adapters(spec: JobSpec, card: dict | None) -> tuple[Adapter, ...]:
    """The VAE, ControlNet, LoRAs, embeddings and the job's own fine-tune (LoRA or embedding), each
    by the content hash of the file that is loaded (not of the folder around it, whose card and
    checkpoints change from one training to the next)."""
    from augment.generate.pipelines import hub_snapshot, lora_file, pipeline_index

    paths, generation = spec.paths, spec.generation
    adapters = []
    if generation.config is not None and paths.config and Path(paths.model).is_file():
        # a single file's configs (scheduler, tokenizer) shape its pixels: hashed, not weights
        configs = model_content_hash(paths.config, suffixes=CONFIG_SUFFIXES)
        adapters.append(Adapter("config", generation.config, configs))
    if generation.vae is not None and paths.vae:
        vae, index = Path(paths.vae), pipeline_index(paths.vae)
        if index is not None:  # a pipeline, local or cached: its vae/ is what loads
            vae = index.parent / "vae"
        elif not vae.exists():  # a cached hub id of the VAE alone: its snapshot's files
            vae = hub_snapshot(paths.vae) or vae
        adapters.append(Adapter("vae", generation.vae, model_content_hash(vae)))
    if generation.controlnet is not None and paths.controlnet:
        adapters.append(
            Adapter("controlnet", generation.controlnet.model, model_content_hash(paths.controlnet))
        )
    for number, (lora, path) in enumerate(zip(generation.loras, paths.loras, strict=True)):
        weights = lora_file(path, lora, number)
        adapters.append(Adapter("lora", lora.path, model_content_hash(weights)))
    for inversion, path in zip(
        generation.textual_inversions, paths.textual_inversions, strict=True
    ):
        adapters.append(Adapter("textual_inversion", inversion.path, model_content_hash(path)))
    if card is not None and card["method"] != "dreambooth":
        for file in card["files"]:
            name = f"{card['method']}:{file}"
            adapters.append(
                Adapter("finetune", name, model_content_hash(Path(paths.finetuned) / file))
            )
    return tuple(adapters)
