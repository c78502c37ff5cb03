"""Generation performance and consistency on the machine at hand (a GPU when there is one).

`python scripts/perf.py --out DIR` (from a checkout, with the project installed) measures,
in one run:

- each jobs/tiny/*.yaml through `run_job` on this device (float16 on a GPU): rows, flags,
  float32 re-renders, seconds;
- a batch of 8 against 8 single renders with the same seeds: the max pixel difference;
- the demo's generation (jobs/demo.yaml) on this device.

Throughput of the Stable Diffusion 1.5 and SDXL architectures, against the loops people write
and the floor, is `augment bench perf`.

Results go to DIR/perf.json; timings are ratios within this one run.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pixels(record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record["image"]["bytes"]))).astype(int)


def tiny_jobs(device: str, dtype: str, out: Path) -> list[dict]:
    """Every tiny job on this device: what it wrote and how long it took."""
    import pyarrow.parquet as pq

    from augment.config import load_spec
    from augment.job import RunOptions, run_job

    results = []
    for job in sorted((REPO / "jobs" / "tiny").glob("*.yaml")):
        overrides = {"generation.device": device, "generation.dtype": dtype}
        spec = load_spec(job, {**overrides, "output.dir": str(out / job.stem)})
        started = time.perf_counter()
        result = run_job(spec, RunOptions(distributor="local", force=True))
        seconds = time.perf_counter() - started
        rows = pq.read_table(out / job.stem / "shards").to_pylist()
        results.append(
            {
                "job": job.stem,
                "mode": spec.generation.mode,
                "dtype": dtype,
                "rows": len(rows),
                "failed": result.failed,
                "nan": sum(r["nan"] for r in rows),
                "black": sum(r["black"] for r in rows),
                "float32_retry": sum(r["float32_retry"] for r in rows),
                "seconds": round(seconds, 2),
            }
        )
        print(results[-1], flush=True)
    return results


def batch_consistency(job: str, device: str, dtype: str) -> dict:
    """A batch of 8 vs the same 8 items one by one: max pixel difference (0..255)."""
    from augment.config import load_spec
    from augment.generate.engine import make_generator
    from augment.job import plan_for

    overrides = {"generation.device": device, "generation.dtype": dtype, "generation.batch_size": 8}
    spec = load_spec(REPO / "jobs" / "tiny" / f"{job}.yaml", overrides)
    items = plan_for(spec)[:8]
    generator = make_generator(spec)
    together = generator(items)
    singles = [r for item in items for r in generator([item])]
    diff = max(
        int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(together, singles, strict=True)
    )
    result = {"job": job, "dtype": dtype, "max_pixel_difference": diff}
    print(result, flush=True)
    return result


def demo_generation(device: str, out: Path) -> dict:
    """The demo's digits (jobs/demo.yaml) rendered on this device."""
    from augment.config import load_spec
    from augment.job import RunOptions, run_job

    overrides = {"generation.device": device, "output.dir": str(out)}
    spec = load_spec(REPO / "jobs" / "demo.yaml", overrides)
    started = time.perf_counter()
    result = run_job(spec, RunOptions(distributor="local", force=True))
    seconds = time.perf_counter() - started
    summary = {"images": result.rendered, "seconds": round(seconds, 2)}
    print("demo generation", summary, flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU check of this script: tiny sizes")
    parser.add_argument("--only", help="run one section: tiny_jobs, batch_of_8_vs_singles, ...")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device, low = ("cuda", "float16") if cuda else ("cpu", "bfloat16")
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
    }
    started = time.perf_counter()
    sections = {
        "tiny_jobs": lambda: tiny_jobs(device, low, args.out / "tiny"),
        "batch_of_8_vs_singles": lambda: [
            batch_consistency("txt2img", device, "float32"),
            batch_consistency("txt2img", device, low),
            batch_consistency("img2img", device, low),
            batch_consistency("sdxl", device, low),
        ],
    }
    if not args.smoke:
        sections["demo_generation"] = lambda: demo_generation(device, args.out / "demo")
    if args.only:
        sections = {args.only: sections[args.only]}
    for name, measure in sections.items():
        try:
            report[name] = measure()
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the rest
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(name, "failed:", report[name]["error"], flush=True)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "perf.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
