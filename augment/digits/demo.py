"""The whole mission on the embedded digits world, offline, on a CPU: `augment demo`.

taxonomy -> prompts -> plan -> Ray generation with the shipped digits model -> shards ->
COCO/YOLO exports -> classifier benchmark (10 real images per class: real-only vs real +
synthetic vs real + as many more real images, several seeds) -> digit canvases (the
rendered digits cut along their threshold masks and pasted by the paste stage) -> detector
benchmark -> report with the gain and its 95 % CI -> a gallery -> OUT/summary.json with the
headline figures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from augment.errors import at_least

log = logging.getLogger(__name__)

DEMO_JOB = Path(__file__).parent / "demo.yaml"  # jobs/demo.yaml in a checkout links to it


@dataclass
class DemoSize:
    """How big each stage is; `quick` is what the tests run."""

    images_per_concept: int
    ratios: list[float]
    seeds: int
    steps: int
    detect_seeds: int
    detect_epochs: int  # of the augmented arm; real-only trains as many steps
    real_canvases: tuple[int, int, int]  # train, val, test
    synthetic_canvases: int
    render_steps: int | None = None  # DDIM steps per digit (None: the job's 25)


# The detector's training settings on the digits world (ultralytics names, see DetectSettings):
# no mirroring (a mirrored 2 is no digit) and no mosaic (it shrinks the 20-32 px digits below what
# a 96 px detector resolves); SGD that steps every batch of 16 instead of every 64 images.
DIGITS_DETECTOR = {
    "fliplr": 0.0,
    "mosaic": 0.0,
    "optimizer": "SGD",
    "lr0": 0.01,
    "nbs": 16,
    "warmup_epochs": 1.0,
}
# The real train canvases hold 10 real digits a class, as the classifier's few-shot arms do.
DETECT_PER_CLASS = 10


#: The validation sweep that chose the demo's settings (`augment bench sweep jobs/demo.yaml
#: --out DIR`, its DIR/sweep.json), shipped so that the report shows it: the demo does not run
#: it again. The quick demo's settings are not the chosen ones, so its report leaves it out.
SWEEP = Path(__file__).parent / "sweep.json"

# More images are generated per class than the largest ratio takes (×30 of 10 real = 300 per
# class; ×2 = 20 in the quick demo): the filter flags about 5 %, and each class must still fill
# its arm, or the arm would train on less than its ratio says.
# To keep `make demo` within 15 minutes on 2 cores (the demo alone took 899 s with every arm
# and 5 detector seeds, on a slow afternoon), the oracle arm came in and the synthetic-only
# arm went (Stöckl's "does the model render it", which per-concept fidelity now answers), and
# the detector trains 3 seeds instead of 5. The classifier's 600 steps and the ×30 ratio (300
# synthetic images a class) are the ones SWEEP chose on validation.
FULL = DemoSize(340, [1.0, 30.0], 5, 600, 3, 7, (300, 150, 150), 300)
QUICK = DemoSize(24, [2.0], 3, 30, 2, 1, (60, 30, 30), 60, render_steps=10)


def run_demo(
    out: Path, quick: bool = False, workers: int | None = None, model: str | None = None
) -> dict:
    """Run every stage into OUT and return the headline figures (also in OUT/summary.json)."""
    from augment.bench.classify import ClassifySettings, run_classify
    from augment.bench.detect import DetectSettings, check_work_folder, run_detect
    from augment.config import load_spec
    from augment.digits.canvases import real_canvases
    from augment.digits.folders import check_canvas_folder, check_demo_folder
    from augment.gallery import GALLERY_NAMES, write_gallery
    from augment.job import RunOptions, run_job
    from augment.reporting import headline, no_nan, write_report
    from augment.sinks import check_own_folder

    if workers is not None:
        at_least("workers", workers, 1, " (leave it out to use every CPU)")
        if quick:
            log.warning("--workers: the quick demo renders in this process, without Ray")
    check_demo_folder(out, load_spec(DEMO_JOB).name)
    check_canvas_folder(out / "real-canvases")
    check_own_folder(out / "gallery", GALLERY_NAMES, "gallery")
    check_work_folder(out / "bench" / "detect")
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        timings[stage] = round(time.perf_counter() - started - sum(timings.values()), 1)

    size = QUICK if quick else FULL
    overrides = {
        "output.dir": str(out),
        "prompts.images_per_concept": size.images_per_concept,
        "output.formats": ["parquet", "coco", "yolo"],
        "generation.model": model,
        "paste.images_per_background": size.synthetic_canvases,
        "generation.num_inference_steps": size.render_steps,
    }
    spec = load_spec(DEMO_JOB, overrides)
    # Renders, masks, pastes into OUT/paste. The quick demo renders in this process: its 240
    # digits take a few seconds, Ray's start-up would be most of its generation time.
    distributor = "local" if quick else "ray"
    run = run_job(spec, RunOptions(distributor, None if quick else workers))
    lap("generation")
    bench = out / "bench"
    run_classify(
        ClassifySettings(
            real="digits",
            synthetic=str(out),
            out=str(bench),
            image_size=16,
            shots=[10],
            ratios=size.ratios,
            seeds=size.seeds,
            steps=size.steps,
            synthetic_only=False,
        )
    )
    lap("classifier_benchmark")
    train, val, test = size.real_canvases
    real_canvases(out / "real-canvases", train, val, per_class=DETECT_PER_CLASS, test_count=test)
    lap("canvases")
    run_detect(
        DetectSettings(
            real=str(out / "real-canvases"),
            synthetic=str(out / "paste"),
            out=str(bench),
            epochs=size.detect_epochs,
            seeds=size.detect_seeds,
            **DIGITS_DETECTOR,
        )
    )
    lap("detector_benchmark")
    sweep = None if quick or not SWEEP.is_file() else SWEEP
    report = write_report(bench / "results.parquet", out / "report", "digits", str(out), sweep)
    gallery = write_gallery(out)
    lap("report")
    import pandas as pd

    figures = headline(
        pd.read_parquet(bench / "results.parquet"), pd.read_parquet(bench / "predictions.parquet")
    )
    summary = {
        "accuracy_percent": {
            arm: figures[arm]
            for arm in ("real_only", "augmented", "oracle", "synthetic_only")
            if arm in figures
        },
        "real_images_per_class": figures.get("shots"),
        "gain": figures.get("gain"),
        "oracle_gain": figures.get("oracle_gain"),
        "synthetic_vs_oracle": figures.get("synthetic_vs_oracle"),
        "recovered": figures.get("recovered"),
        "detector_map50_95": figures.get("detector_map50_95"),
        "detector_gain": figures.get("detector_gain"),
        "detector_evaluated_on": figures.get("detector_evaluated_on"),
        # the demo's detector settings (epochs, nbs, mosaic, fliplr, lr, the paste size) were
        # tuned on the val canvases; the test canvases, scored here, are digits none of it saw
        "detector_settings_chosen_on": "the val canvases; scored once on the test canvases",
        "detector_mask_map50_95": figures.get("detector_mask_map50_95"),
        "detector_mask_gain": figures.get("detector_mask_gain"),
        "images_generated": run.rendered + run.skipped,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "stage_seconds": timings,
        "report": str(report),
        "gallery": str(gallery),
        "duplicates": run.duplicates,
        "chosen_on_validation": json.loads(sweep.read_text())["chosen"] if sweep else None,
        "quick": quick,
    }
    (out / "summary.json").write_text(json.dumps(no_nan(summary), indent=2, default=float))
    return summary
