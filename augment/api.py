"""The public API: every stage as a plain function over plain data (`import augment as ag`).

The command line calls exactly these functions, so anything `augment` does from the shell can
be done from a notebook:

    spec = ag.load_spec("jobs/demo.yaml", {"limit": 20})   # or a dict built in code
    result = ag.run(spec, out="out/x", distributor="local")
    frame = ag.read(result.out_dir)                         # one row per image
    results = ag.classify(synthetic=result.out_dir, out="out/x/bench")
    ag.report("out/x/bench")

Mistakes raise `augment.AugmentError` subclasses whose message is the one line the CLI prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from augment.config import JobSpec
from augment.config import load_spec as _load_spec
from augment.errors import AugmentError, first_line, flag, some_of

if TYPE_CHECKING:
    import datasets
    import pandas as pd

    from augment.finetuning import FinetuneResult
    from augment.job import FilterResult, RunResult
    from augment.labels.paste import PasteResult
    from augment.prompting import Prompt
    from augment.service import Service
    from augment.taxonomy import Concept

Spec = str | Path | dict | JobSpec

#: Benchmark settings that make a run take about a minute: a check that everything works.
CLASSIFY_SMOKE = {"seeds": 3, "steps": 30, "shots": [5], "ratios": [1.0]}
DETECT_SMOKE = {"epochs": 1, "seeds": 3}


def load_spec(spec: Spec, overrides: dict[str, Any] | None = None) -> JobSpec:
    """A validated job spec from a YAML file, a dict or a JobSpec, with dotted overrides
    (``{"seed": 3, "output.dir": "out/x"}``); its files are resolved here, once."""
    return _load_spec(spec, overrides)


def _path(value: Any, name: str) -> Path:
    """A path argument, or an error naming it: None or a number failed deep inside, an empty
    string meant the current folder, and 5 made a folder named '5'."""
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise AugmentError(f"{name}: give a path (a str or a Path), got {value!r}")
    return Path(value)


def _spec(spec: Spec) -> JobSpec:
    """A loaded spec: a JobSpec as it is, anything else through `load_spec`."""
    return spec if isinstance(spec, JobSpec) else load_spec(spec)


def concepts(
    spec: Spec | None = None,
    *,
    source: str | None = None,
    depth: int | None = None,
    leaves: bool = False,
    exclude: tuple[str, ...] = (),
    max_concepts: int | None = None,
    instances: bool = False,
) -> list[Concept]:
    """The concepts of a job spec; or, with `source` instead, of a taxonomy source
    (``"wordnet:weed.n.01"``, ``"coco:animal"``, ``"weeds"``, a list file) with its own
    depth/leaves/exclude/max_concepts/instances."""
    from augment.job import concepts_for
    from augment.taxonomy import load_concepts

    if (spec is None) == (source is None):
        raise AugmentError("concepts() takes a job spec, or source= a taxonomy source: one of them")
    if source is not None:
        if not isinstance(source, str) or not source.strip():
            raise AugmentError(
                f"source: give a taxonomy source such as 'wordnet:weed.n.01', 'coco' or a list "
                f"file's path, got {source!r}"
            )
        return load_concepts(source, max_concepts, depth, leaves, exclude, instances)
    return concepts_for(_spec(spec))


def prompts(spec: Spec, limit: int | None = None) -> list[Prompt]:
    """The job's prompts (the first `limit` in plan order, built alone: a preview), checked
    against the model's text encoder length when it is here."""
    from augment.errors import at_least
    from augment.job import prompts_for

    if limit is not None:
        at_least("limit", limit, 1)
    return prompts_for(_spec(spec), first=limit)


def plan(spec: Spec, output: str | Path | None = None) -> pd.DataFrame:
    """The work items (one row per image to render); written as Parquet to `output` if given."""
    from augment.job import plan_for
    from augment.planning import plan_table, write_plan

    target = None if output is None else _plan_file(output)
    items = plan_for(_spec(spec))
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_plan(items, target)
        except OSError as exc:
            if exc.filename:  # the OS's own (a file where a folder goes): said as for any command
                raise
            raise AugmentError(  # pyarrow's carry no file name: say which path
                f"output: cannot write {target} ({first_line(exc)}); choose a folder you can write"
            ) from None
    return plan_table(items).to_pandas()


def _plan_file(output: Any) -> Path:
    """Where a plan may be written: a .parquet file, new or an earlier plan; never a folder, a
    job file or a user's other file (`-o job.yaml` replaced the job by Parquet; `-o
    results.parquet`, a benchmark's results)."""
    path = _path(output, "output")
    if path.is_dir():
        raise AugmentError(f"output: {path} is a folder; give a file, such as {path}/plan.parquet")
    if path.suffix != ".parquet":
        raise AugmentError(
            f"output: {path} would hold Parquet under another name; give a .parquet file, such "
            f"as {path.with_suffix('.parquet')}"
        )
    if path.is_file():
        with path.open("rb") as file:
            if file.read(4) != b"PAR1":
                raise AugmentError(
                    f"output: {path} exists and is no Parquet file, so no earlier plan; give "
                    "another file"
                )
        import pyarrow.parquet as pq

        from augment.planning import PLAN_SCHEMA

        try:
            columns = pq.read_schema(path).names
        except Exception:  # noqa: BLE001 - a damaged file is no earlier plan either
            columns = []
        if columns != PLAN_SCHEMA.names:  # a results table, a shard: someone's data
            shown = some_of(columns, 4)
            raise AugmentError(
                f"output: {path} is a Parquet file but no plan (its columns: {shown or 'none'}), "
                "so it is not replaced; give another file"
            )
    return path


def run(
    spec: Spec,
    out: str | Path | None = None,
    workers: int | None = None,
    distributor: Literal["ray", "local"] = "ray",
    *,
    address: str | None = None,
    retries: int = 2,
    force: bool = False,
) -> RunResult:
    """Run (or resume) a job into `out` (default: the spec's output.dir): plan, render,
    filter, shards, exports. `distributor="local"` renders in this process, without Ray."""
    from augment.job import RunOptions, run_job

    options = RunOptions(distributor, workers, address, retries, force)  # checked first
    loaded = _spec(spec)
    if out is not None:
        loaded = loaded.with_output_dir(_path(out, "out"))
    return run_job(loaded, options)


def finetune(spec: Spec, force: bool = False) -> FinetuneResult:
    """Train the job's `finetune:` adapter (LoRA, textual inversion or DreamBooth) from its real
    images, or reuse it when complete; `run` does this first by itself. `force` starts over."""
    from augment.job import finetune as train

    flag("force", force)
    return train(_spec(spec), force=force)


def paste(spec: Spec, force: bool = False) -> PasteResult:
    """Paste the job's segmented renders onto its `paste.backgrounds` into OUT/paste (resumed
    when it holds the same paste; `force` starts over); `run` does this last by itself."""
    from augment.job import paste as paste_job

    flag("force", force)
    return paste_job(_spec(spec), force=force)


def read(out: str | Path, as_dataset: bool = False) -> pd.DataFrame | datasets.Dataset:
    """A run's shards: a pandas DataFrame, one row per image (flagged ones included, see the
    flag columns), whose `image` cells decode on demand (`.open()` gives a PIL image); or, with
    `as_dataset`, a Hugging Face `datasets.Dataset` whose `image` column is an Image feature."""
    from augment.sinks.parquet import read_dataset, read_frame

    flag("as_dataset", as_dataset)
    return read_dataset(_path(out, "out")) if as_dataset else read_frame(_path(out, "out"))


def export(
    out: str | Path, formats: list[str] | str, include_flagged: bool = False
) -> dict[str, Path]:
    """Write exports (coco, yolo, yolo-seg, imagefolder: a list, or one name) from a run's
    shards; returns their paths."""
    from augment.sinks import export as export_formats

    flag("include_flagged", include_flagged)
    if not isinstance(formats, str | list | tuple):
        raise AugmentError(f"formats: a name or a list of names (coco, yolo, ...), got {formats!r}")
    names = [formats] if isinstance(formats, str) else list(formats)
    folder = _path(out, "out")
    with _output_locked(folder):  # two exports at once deleted each other's temporary folders
        return export_formats(folder, names, include_flagged)


@contextlib.contextmanager
def _output_locked(folder: Path) -> Iterator[None]:
    """OUT's lock held (`augment run`'s): nothing else writes there meanwhile, and no filter
    stopped half way is built on. A folder that holds no run (none at all, or a run's shards/
    given for it) is left for the step to name, without a lock file left in it."""
    from augment.job import check_no_filter_stopped, lock_output

    if not (folder / "shards").is_dir():
        yield
        return
    release = lock_output(folder, option="")
    try:  # exports or a gallery of a half-filtered run hold neither flags nor the others
        check_no_filter_stopped(folder)
    except BaseException:
        release()
        raise
    try:
        yield
    finally:
        release()


def refilter(
    out: str | Path,
    scorer: str | None = None,
    min_concept_score: float | None = None,
    min_clip_score: float | None = None,
    real: str | Path | None = None,
) -> FilterResult:
    """Flag a finished run again without rendering: other minimums, another scorer, and
    duplicates (also of a benchmark's real pool: `real` as `classify` takes it). Returns a
    `FilterResult` (flag counts before and after); the shards, manifest and exports change."""
    from augment.job import refilter as refilter_run

    folder = _path(out, "out")
    pictures = None if real is None else real_pictures(str(_path(real, "real")))
    real_name = None if real is None else str(real)  # the manifest's history is JSON
    return refilter_run(folder, scorer, min_concept_score, min_clip_score, pictures, real_name)


def view(out: str | Path, per_concept: int = 500) -> Path:
    """Write OUT/gallery, a static HTML gallery of a run (one page per concept, the
    per-concept table as index); returns the index page's path."""
    from augment.errors import at_least
    from augment.gallery import write_gallery

    at_least("per_concept", per_concept, 1)
    folder = _path(out, "out")
    with _output_locked(folder):
        return write_gallery(folder, per_concept)


def inspect(path: str | Path) -> dict:
    """What a PNG says of itself: its `augment` provenance (item id, job, spec hash, model,
    model hash, licence, version, synthetic) and its `parameters` text (None where absent)."""
    from augment.provenance import inspect_png

    return inspect_png(_path(path, "path"))


def real_pictures(real: str) -> list:
    """The real pool of a benchmark source (`digits`, an image folder, a COCO file) as
    pictures a run's images are compared with for duplicates."""
    from augment.bench.data import load_real
    from augment.duplicates import THUMB, Picture
    from augment.taxonomy.listfile import slugify

    data = load_real(real, THUMB)
    names = data.classes.names
    pool = data.pool
    return [
        Picture.of(image_id, slugify(names[label]), pixels)
        for image_id, label, pixels in zip(pool.ids, pool.labels, pool.images, strict=True)
    ]


def classify(
    real: str = "digits",
    synthetic: str | Path | None = None,
    out: str | Path = "bench",
    smoke: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """Classifier benchmark: real-only vs real + synthetic (each ratio) vs synthetic-only,
    over seeds, on the held-out real test set. `settings` are `ClassifySettings` fields
    (model, image_size, shots, ratios, seeds, steps, ...); `smoke` is a one-minute check (its
    small sizes, where `settings` does not set them).
    Writes OUT/results.parquet and returns it."""
    from augment.bench.classify import ClassifySettings, run_classify

    flag("smoke", smoke)
    smoke_sizes = CLASSIFY_SMOKE if smoke else {}  # what the caller sets still wins
    chosen = {"real": real, "synthetic": synthetic, "out": out, **smoke_sizes, **settings}
    return run_classify(_settings(ClassifySettings, chosen))


def detect(
    real: str | Path,
    synthetic: str | Path | None = None,
    out: str | Path = "bench",
    smoke: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """Detector benchmark: YOLO from scratch on real-only vs real + synthetic boxes, COCOeval
    mAP on the real test split (val where there is none), over seeds. `settings` are
    `DetectSettings` fields (task detect or segment, model, imgsz, epochs, seeds, evaluate_on,
    and ultralytics' fliplr, mosaic, optimizer, lr0, nbs, warmup_epochs). Writes
    OUT/results.parquet and returns it."""
    from augment.bench.detect import DetectSettings, run_detect

    flag("smoke", smoke)
    smoke_sizes = DETECT_SMOKE if smoke else {}  # what the caller sets still wins
    chosen = {"real": real, "synthetic": synthetic, "out": out, **smoke_sizes, **settings}
    return run_detect(_settings(DetectSettings, chosen))


def bench_perf(out: str | Path = "perf", smoke: bool = False, **settings: Any) -> dict:
    """Generation speed in one process: the seed article's one-prompt loop, a bare batched
    diffusers loop, augment's engine (default settings and each fast path; through Ray on a
    CPU) and the UNet + VAE floor, with FLOPs per image and model-FLOPs utilisation.
    `settings` are `PerfSettings` fields (models, model, images, fast, ray, baselines,
    peak_tflops).
    Writes OUT/perf.json and returns it."""
    from augment.bench.perf import PerfSettings, run_perf

    return run_perf(_settings(PerfSettings, {"out": out, "smoke": smoke, **settings}))


def bench_serve(job: str | Path, out: str | Path = "load", **settings: Any) -> dict:
    """A bounded load test of the generation service on loopback: p50/p95 latency, images/s
    and errors at each concurrency, a replica killed mid-load, and the batch path's images/s
    for as many images. `settings` are `LoadSettings` fields (concurrency, requests, images,
    replicas, port, kill, batch). Writes OUT/load.json and load.md and returns the JSON."""
    from augment.bench.load import LoadSettings, run_load

    return run_load(_settings(LoadSettings, {"job": job, "out": out, **settings}))


def sweep(
    job: str | Path, real: str = "digits", out: str | Path = "sweep", **settings: Any
) -> dict:
    """Choose a job's settings on validation data: the classifier's steps (on the real-only
    baseline), then guidance and the filter's minimum concept score (renders re-filtered, not
    rendered again), then the ratio of synthetic to real images, each scored on the real set's
    validation split, never on test. `settings` are `SweepSettings` fields (guidance,
    min_concept_score, ratios, steps, shots, seeds, image_size, images_per_concept, workers).
    Writes OUT/sweep.json, sweep.csv and sweep.md and returns the JSON."""
    from augment.bench.sweep import SweepSettings, run_sweep

    chosen = {"job": job, "real": real, "out": out, **settings}
    return run_sweep(_settings(SweepSettings, chosen))


#: The benchmark settings that name a file or folder (a number there failed deep inside).
PATH_SETTINGS = {"real", "synthetic", "out", "job", "weights"}


def _settings(kind: type, chosen: dict):
    """A settings dataclass from keyword arguments; paths as strings, None left as default."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise AugmentError(
            f"unknown {kind.__name__} setting(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}"
        )
    values = {k: v for k, v in chosen.items() if v is not None}
    for name in PATH_SETTINGS & set(values):
        values[name] = str(_path(values[name], name))
    if "out" in values and Path(values["out"]).is_file():
        raise AugmentError(f"out: {values['out']} is a file; give a folder for the results")
    return kind(**values)


def report(
    results: str | Path,
    out: str | Path | None = None,
    real: str | None = None,
    synthetic: str | Path | None = None,
    sweep: str | Path | None = None,
) -> Path:
    """report.md and its plots from a results table (the file, or the folder holding it), with
    the validation sweep (its sweep.json, or the folder holding it) that chose the settings,
    when given."""
    from augment.reporting import write_report

    results = _path(results, "results")
    real = None if real is None else str(_path(real, "real"))
    synthetic = None if synthetic is None else _path(synthetic, "synthetic")
    sweep_path = _path(sweep, "sweep") if sweep is not None else None
    table = results / "results.parquet" if results.is_dir() else results
    if not table.is_file():
        raise AugmentError(f"{table}: no results table; run `augment bench ...` first")
    if synthetic is not None:  # named here: its sample grid and counts, not silently none
        from augment.sinks.parquet import run_shards

        run_shards(synthetic)
    out_dir = _path(out, "out") if out is not None else table.parent / "report"
    return write_report(table, out_dir, real, str(synthetic) if synthetic else None, sweep_path)


def serve(spec: Spec, **options: Any) -> Service:
    """Start the generation service for a txt2img job: a Ray Serve application (one replica
    per GPU, or `replicas` CPU replicas) answering POST /generate, GET /concepts, /health and
    /spec on `host`:`port`; `write` commits every served image to that output folder.
    `options` are `ServeOptions` fields (host, port, replicas, max_images, max_size,
    batch_wait_s, write, overridable, address). Returns a `Service` (its `url`; `stop()` shuts
    it down) once every replica answers; `augment.Client(service.url)` talks to it."""
    from augment.service import ServeOptions, start_service

    return start_service(_spec(spec), _settings(ServeOptions, options))


def submit(spec: Spec, address: str, workers: int | None = None) -> str:
    """Submit `augment run` of the spec to the Ray cluster at `address`; returns the job id."""
    from augment.cluster import submit_job

    _address(address)
    return submit_job(_spec(spec), address, workers)


def _address(address: Any) -> None:
    """A Ray address is text ('ray://head:10001', 'http://head:8265', 'auto'), or an error
    naming it: a number failed deep in Ray."""
    if not isinstance(address, str) or not address.strip():
        raise AugmentError(
            f"address: give the Ray cluster's address as text, such as 'http://head:8265', got "
            f"{address!r}"
        )


def status(job_id: str, address: str) -> str:
    """A submitted job's status (PENDING, RUNNING, SUCCEEDED, STOPPED, or FAILED with Ray's
    reason: "FAILED: ...")."""
    from augment.cluster import job_status

    _address(address)
    return job_status(job_id, address)


def logs(job_id: str, address: str, follow: bool = False) -> str | Iterator[str]:
    """A submitted job's log text so far; with `follow`, an iterator of its lines as they
    come, until the job ends (it works in a notebook too)."""
    from augment.cluster import follow_job_logs, job_logs

    flag("follow", follow)
    _address(address)
    return follow_job_logs(job_id, address) if follow else job_logs(job_id, address)


def demo(
    out: str | Path = "out/demo",
    quick: bool = False,
    workers: int | None = None,
    model: str | None = None,
    personalise: bool = False,
    seeds: int | None = None,
    first_seed: int = 0,
) -> dict:
    """The whole mission on the embedded digits world (`make demo`): generate, export,
    benchmark a classifier and a detector, report. Returns the headline figures. With
    `personalise`, the novel-concept experiment instead (fine-tuning the 9-class digits model
    on a class it never saw); its figures join OUT/summary.json under "personalise". `seeds`
    and `first_seed` size that experiment (default: its 5 seeds from 0)."""
    out = _path(out, "out")
    flag("quick", quick)
    flag("personalise", personalise)
    if personalise:
        from augment.digits.personalise import run_personalise

        if model is not None:
            raise AugmentError(
                "the novel-concept experiment fine-tunes the shipped 9-class digits model; "
                "drop model (--model) or personalise (--personalise)"
            )
        return run_personalise(Path(out), quick, workers, seeds, first_seed)
    if seeds is not None or first_seed:
        given = "seeds" if seeds is not None else "first_seed"
        raise AugmentError(
            f"{given} sizes the novel-concept experiment, which runs only with personalise "
            "(augment demo --personalise): add it, or leave it out"
        )
    from augment.digits.demo import run_demo

    return run_demo(Path(out), quick=quick, workers=workers, model=model)


def summarize(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """A benchmark's results table (`classify`, `detect`, or bench/results.parquet read back)
    per arm: one row per (task, arm, ratio, shots, metric, label) with its mean over seeds
    and a t-interval (`ci_low`, `ci_high`, cut to the metric's range) and `n_seeds`."""
    from augment.bench.stats import summarize as summarize_results

    check_results_frame("summarize", results, confidence=confidence)
    return summarize_results(results, confidence)


def paired_gain(
    results: pd.DataFrame,
    metric: str = "top1",
    arm: str = "augmented",
    baseline: str = "real_only",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """The gain of `arm` over `baseline` on `metric`, paired by seed (each seed's two models
    saw the same real images), per ratio: `gain`, its t-interval and `n_pairs`; what the
    report and the demo print."""
    from augment.bench.stats import paired_gain as gains

    check_results_frame("paired_gain", results, metric, confidence)
    return gains(results, metric, arm, baseline, confidence)


RESULT_COLUMNS = ("task", "arm", "ratio", "shots", "seed", "metric", "label", "value")


def check_results_frame(
    who: str, results: Any, metric: str | None = None, confidence: float = 0.95
) -> None:
    """A results table as `summarize` and `paired_gain` read one, or one line saying what was
    given instead: a path (which `report` takes), a frame of other columns, a metric it does
    not hold, a confidence given in percent."""
    import pandas as pd

    if not isinstance(results, pd.DataFrame):
        raise AugmentError(
            f"{who} takes a results table (a pandas DataFrame, such as "
            f"pd.read_parquet('bench/results.parquet')), not a {type(results).__name__}"
        )
    lacking = [column for column in RESULT_COLUMNS if column not in results.columns]
    if lacking:
        raise AugmentError(
            f"{who}: the table lacks {', '.join(lacking)}; give a benchmark's results table "
            "(bench/results.parquet, or what classify and detect return)"
        )
    if not 0 < confidence < 1:
        raise AugmentError(f"confidence is a fraction between 0 and 1 (0.95), got {confidence}")
    if metric is not None and metric not in set(results["metric"]):
        raise AugmentError(
            f"{who}: no {metric!r} rows in this table; it has "
            f"{some_of(sorted(map(str, set(results['metric']))), 12)}"
        )
