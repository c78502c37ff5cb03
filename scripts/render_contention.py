"""Why does the engine's render loop run slower than a bare pipeline call on a GPU?

One process, the Stable Diffusion 1.5 architecture with random weights (fp16, 512 px, 25
DPMSolver steps, guidance 7.5, batch 8). Times the same batched pipeline call:

- alone, as `bench perf`'s "diffusers calls" row does (no generator);
- with per-image CPU generators, as the engine seeds it;
- while threads PNG-encode and hash 512 px images beside it (the engine's default overlap);
- while processes do the same work (no share of the interpreter lock);
- issued from a worker thread (the engine renders on one);

and how long the CPU takes to launch 25 UNet forwards against how long the GPU takes to run
them. Then the engine itself (`bench perf`'s engine row) with the overlap on and off. Prints
a table; writes OUT/contention.json. Findings (H200, 2026-11-27) are in the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np


def busy_encode(stop: threading.Event) -> int:
    from augment.generate.engine import encode_image

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(4)]
    done = 0
    while not stop.is_set():
        for image in images:
            encode_image(image)
        done += 4
    return done


def encode_for(seconds: float) -> int:
    """In a child process: encode 512 px images for `seconds`."""
    from augment.generate.engine import encode_image

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(4)]
    done, until = 0, time.perf_counter() + seconds
    while time.perf_counter() < until:
        for image in images:
            encode_image(image)
        done += 4
    return done


def main() -> None:
    import torch

    from augment.bench.perf import CASES, PerfSettings, engine, model_folder, prompts_for

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="contention")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--engine-images", type=int, default=64)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    case = CASES["sd15"]
    device = "cuda"
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def save() -> None:
        (out / "contention.json").write_text(json.dumps(results, indent=1))

    work = Path(tempfile.mkdtemp(prefix="contention-", dir=out))
    location = model_folder(case, PerfSettings(), device, work)
    from augment.bench.perf import diffusers_pipeline

    pipe = diffusers_pipeline(location, case, device)
    prompts = prompts_for(case.batch)

    def call(generators: bool) -> None:
        kwargs = {}
        if generators:
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(i) for i in range(8)]
        pipe(
            prompt=prompts,
            negative_prompt=[""] * len(prompts),
            num_inference_steps=case.steps,
            guidance_scale=case.guidance,
            height=case.size,
            width=case.size,
            output_type="pt",
            **kwargs,
        ).images.cpu()

    def per_batch(generators: bool = False) -> float:
        call(generators)
        times = []
        for _ in range(args.batches):
            started = time.perf_counter()
            call(generators)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def row(name: str, seconds: float, **extra) -> None:
        results[name] = {"s_per_batch": seconds, "images_per_s": case.batch / seconds, **extra}
        rate = case.batch / seconds
        print(f"{name:44s} {seconds:7.3f} s/batch  {rate:6.2f} images/s", flush=True)
        save()

    alone = per_batch(False)
    row("call, no generator", alone)
    row("call, CPU generators", per_batch(True))

    for threads in (1, 2):
        stop = threading.Event()
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(busy_encode, stop) for _ in range(threads)]
            started = time.perf_counter()
            seconds = per_batch(True)
            stop.set()
            encoded = sum(f.result() for f in futures)
        rate = encoded / (time.perf_counter() - started)
        row(f"call + {threads} encoding thread(s)", seconds, encoded_per_s=rate)

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(encode_for, [0.1, 0.1]))  # started
        busy = 1.3 * alone * (args.batches + 1)  # as long as the calls take
        futures = [pool.submit(encode_for, busy) for _ in range(2)]
        seconds = per_batch(True)
        encoded = sum(f.result() for f in futures)
    row("call + 2 encoding processes", seconds, encoded_per_s=encoded / busy)

    with ThreadPoolExecutor(1) as pool:
        seconds = pool.submit(per_batch, True).result()
    row("call from a worker thread", seconds)

    # The engine's own generator: its render call (seeding, inputs, checks) without workers.
    from augment.bench.perf import engine_spec
    from augment.generate.engine import make_generator
    from augment.job import plan_for

    spec = engine_spec(location, case, 16, work / "generator", device, {})
    generator = make_generator(spec)
    items = plan_for(spec)[: case.batch]
    generator.render_batch(items)
    times = []
    for _ in range(args.batches):
        started = time.perf_counter()
        rendered = generator.render_batch(items)
        times.append(time.perf_counter() - started)
    row("engine generator.render_batch", statistics.median(times))
    from augment.generate.engine import encode_image

    started = time.perf_counter()
    for record, pixels in zip(generator.records(rendered), rendered.pixels, strict=True):
        encode_image(*generator.encoding(record, pixels))
    results["encode one batch (s)"] = time.perf_counter() - started
    print(f"records of one batch (PNG + hash): {results['encode one batch (s)']:.3f} s")
    generator.pipe.to("cpu")
    del generator

    # CPU launch time of 25 UNet forwards against their GPU time.
    from augment.bench.perf import unet_inputs

    inputs = unet_inputs(pipe, case, device)
    with torch.inference_mode():
        for _ in range(3):
            pipe.unet(**inputs)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(case.steps):
            pipe.unet(**inputs)
        launched = time.perf_counter() - started
        torch.cuda.synchronize()
        total = time.perf_counter() - started
    results["unet 25 forwards"] = {"cpu_launch_s": launched, "gpu_s": total}
    print(f"25 UNet forwards: CPU launch {launched:.3f} s, done after {total:.3f} s", flush=True)
    save()
    pipe.to("cpu")  # the engine loads its own copy
    torch.cuda.empty_cache()

    variants = {
        "engine, encode in 2 threads (default)": {},
        "engine, no overlap": {"encode_threads": 0},
    }
    for name, extra in variants.items():
        try:
            measured = engine(location, case, args.engine_images, work, device, extra)
        except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(name, results[name], flush=True)
            save()
            continue
        measured.pop("pixels")
        results[name] = measured
        print(
            f"{name:44s} {measured['images_per_s']:6.2f} images/s, "
            f"render {measured['device_s_per_batch']:.3f} s/block",
            flush=True,
        )
        save()


if __name__ == "__main__":
    main()
