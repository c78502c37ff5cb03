"""`augment bench sweep`: choose a job's settings on validation data, never on the test set.

A setting picked by looking at test scores makes the test figure an upper estimate. So the
sweep scores every classifier on the real set's validation split (`digits` has one: 20 real
images a class, disjoint from the pool the classifiers train on and from the test split), in
three stages, each fixing what the one before chose:

1. **steps**: the classifier's optimisation steps, chosen on the real-only baseline (a fair
   baseline is tuned too, or the gain over it is inflated);
2. **generation**: the job rendered at each guidance scale (once; a rerun resumes), each render
   re-filtered at each minimum concept score without rendering (`refilter`), and the
   augmented arm trained at the largest ratio. The renders do not take the job's own minimum
   (the sweep chooses it), so editing it does not refuse them; a render folder of a job
   changed otherwise is refused before any classifier trains;
3. **ratio**: synthetic images per real image (so images per class used) at the chosen render.

Each cell is a mean over seeds with its 95 % interval, and the gain over real-only paired by
seed. Writes OUT/sweep.json (settings, table, what was chosen), OUT/sweep.csv and OUT/sweep.md;
renders stay in OUT/renders, classifier results in OUT/runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from augment.bench.classify import ClassifySettings, evaluation_set, run_classify
from augment.bench.data import load_real
from augment.bench.stats import mean_ci, metric_range
from augment.errors import AugmentError, as_list, first_line


@dataclass
class SweepSettings:
    job: str = "jobs/demo.yaml"
    real: str = "digits"
    out: str = "sweep"
    guidance: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    min_concept_score: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    ratios: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0])
    steps: list[int] = field(default_factory=lambda: [300, 600, 1200])
    shots: int = 10
    seeds: int = 3
    image_size: int = 16
    images_per_concept: int | None = None  # rendered per concept (default: the job's)
    workers: int | None = None  # classifiers trained at once

    def __post_init__(self) -> None:
        for name in ("guidance", "min_concept_score", "ratios", "steps"):
            setattr(self, name, as_list(getattr(self, name)))
            if not getattr(self, name):
                raise AugmentError(f"sweep {name}: give at least one value")
        # each test is written so that NaN fails it (NaN compares false), and infinity is
        # refused where it would be rendered or counted: before any classifier trains
        if not all(1 <= g < math.inf for g in self.guidance):
            raise AugmentError(
                f"sweep guidance: finite, 1 or more (1: no guidance), got {self.guidance}"
            )
        if not all(0 <= m <= 1 for m in self.min_concept_score):
            raise AugmentError(
                f"sweep min_concept_score: between 0 and 1, got {self.min_concept_score}"
            )
        wrong = [
            (
                f"ratios {self.ratios}",
                "finite and above 0 (synthetic images per real image)",
                not all(0 < r < math.inf for r in self.ratios),
            ),
            (f"steps {self.steps}", "1 or more", min(self.steps) < 1),
            (f"shots {self.shots}", "1 or more", self.shots < 1),
            (f"seeds {self.seeds}", "2 or more (an interval needs two)", self.seeds < 2),
        ]
        for given, wanted, bad in wrong:
            if bad:
                raise AugmentError(f"sweep {given}: {wanted}")
        for name in ("guidance", "min_concept_score"):  # each value names a folder (`{value:g}`)
            shown = [f"{value:g}" for value in getattr(self, name)]
            if len(set(shown)) < len(shown):
                twice = next(text for text in shown if shown.count(text) > 1)
                raise AugmentError(
                    f"sweep {name} {getattr(self, name)}: two values read as {twice} (to 6 "
                    "significant digits), and would share one render folder; give each once"
                )


def top1(results: pd.DataFrame, arm: str) -> pd.Series:
    """Top-1 per seed of one arm (a single ratio), indexed by seed."""
    rows = results[(results["metric"] == "top1") & (results["label"] == "")]
    return rows[rows["arm"] == arm].set_index("seed")["value"].sort_index()


def trained(results: pd.DataFrame) -> dict:
    """{"ratio_trained": the augmented arm's (a single ratio)} where the synthetic set left it
    short of the ratio asked: the filter's minimums compete at different synthetic counts."""
    rows = results[(results["metric"] == "top1") & (results["arm"] == "augmented")]
    if "ratio_trained" not in rows or not rows["synthetic_short"].any():
        return {}
    return {"ratio_trained": float(rows["ratio_trained"].mean())}


def cell(stage: str, values: pd.Series, baseline: pd.Series | None, **setting) -> dict:
    """One table row: the setting, its mean top-1 [95 % CI] and the paired gain over the
    baseline (same seeds)."""
    mean, low, high = mean_ci(values, bounds=metric_range("top1"))
    row = {"stage": stage, **setting, "top1": mean, "ci_low": low, "ci_high": high}
    if baseline is not None:
        gain, gain_low, gain_high = mean_ci(
            values - baseline.loc[values.index], bounds=metric_range("top1", gain=True)
        )
        row.update(gain=gain, gain_low=gain_low, gain_high=gain_high)
    row["seeds"] = len(values)
    return row


def best(rows: list[dict], key: str = "top1") -> dict:
    """The row with the highest mean; ties go to the earlier (cheaper) setting."""
    return max(rows, key=lambda row: (row[key], -rows.index(row)))


def render(spec) -> Path:
    """The sweep's render spec run into its output folder (its filter scores every image; no
    paste, no masks); a rerun resumes it."""
    from augment.job import RunOptions, run_job

    run_job(spec, RunOptions(distributor="local"))
    return Path(spec.output.dir)


def rendered_minimum(out: Path) -> float:
    """The minimum concept score the renders in `out` were made with, else 0 (none). The
    images do not depend on it and the sweep flags them again at each of its own minimums, so
    the job's minimum must not decide whether earlier renders resume: those of an earlier
    sweep keep whichever minimum they were made with."""
    from augment.job import saved_job_spec

    if not (out / "job.yaml").is_file():
        return 0.0
    try:
        return saved_job_spec(out).filters.min_concept_score
    except AugmentError:  # a damaged job.yaml: `check_renders_resume` names it
        return 0.0


def sweep_spec(settings: SweepSettings, guidance: float, out: Path):
    """The job as the sweep renders it at `guidance` into `out`, or an error saying why it
    cannot. Its filters.min_concept_score is not the job's but `rendered_minimum`'s: the sweep
    chooses that minimum itself, on renders it re-filters."""
    from augment.config import load_spec

    overrides = {
        "output.dir": str(out),
        "output.formats": ["parquet"],
        "generation.guidance_scale": guidance,
        "prompts.images_per_concept": settings.images_per_concept,
        "filters.min_concept_score": rendered_minimum(out),
    }
    spec = load_spec(settings.job, overrides)
    if spec.filters.scorer is None:
        raise AugmentError(
            f"{settings.job}: the sweep re-filters renders by concept score; give the job a "
            "filters.scorer"
        )
    return spec.model_copy(update={"paste": None, "segment": None, "labels": None})


def check_renders_resume(specs: list) -> None:
    """Each render folder holds nothing yet, or renders these specs resume: refused before
    any classifier trains, with what this command can do about it (it has no --force)."""
    from augment.job import check_resumable, concepts_for

    concepts = concepts_for(specs[0])  # the guidance is all that differs between them
    for spec in specs:
        folder = Path(spec.output.dir)
        if folder.exists():
            remedy = (
                "use another --out, or move that folder away to render it again (the job "
                "changed since it was rendered)"
            )
            check_resumable(folder, spec, concepts, remedy)


def run_sweep(settings: SweepSettings) -> dict:
    """Every stage; writes OUT/sweep.json, sweep.csv and sweep.md and returns the JSON."""
    from augment.generate.pipelines import check_models
    from augment.job import refilter

    out = Path(settings.out)
    # every render's spec and folder checked before any training
    specs = {
        g: sweep_spec(settings, g, out / "renders" / f"guidance-{g:g}") for g in settings.guidance
    }
    spec = specs[settings.guidance[0]]
    check_models(spec.generation, spec.paths)
    check_renders_resume(list(specs.values()))
    base = ClassifySettings(
        real=settings.real,
        image_size=settings.image_size,
        shots=[settings.shots],
        seeds=settings.seeds,
        evaluate_on="validation",
        oracle=False,
        synthetic_only=False,
        quality=False,
        workers=settings.workers,
    )
    real = load_real(settings.real, settings.image_size)
    validation = evaluation_set(real, base)  # or an error saying what to do
    out.mkdir(parents=True, exist_ok=True)
    table: list[dict] = []

    def classify(name: str, **changes) -> pd.DataFrame:
        return run_classify(replace(base, out=str(out / "runs" / name), **changes), real)

    # 1. The baseline's steps.
    baselines = {}
    for steps in sorted(settings.steps):  # ties go to fewer steps
        baselines[steps] = top1(classify(f"real-only-{steps}", steps=steps), "real_only")
        table.append(cell("steps", baselines[steps], None, arm="real_only", steps=steps))
    steps = best(table)["steps"]
    baseline = baselines[steps]

    # 2. The render: guidance, then the filter's minimum.
    largest = max(settings.ratios)
    generation = []
    for guidance in settings.guidance:
        rendered = render(specs[guidance])
        for minimum in settings.min_concept_score:
            refilter(rendered, min_concept_score=minimum)
            results = classify(
                f"guidance-{guidance:g}-min-{minimum:g}",
                synthetic=str(rendered),
                ratios=[largest],
                steps=steps,
                real_only=False,
            )
            generation.append(
                cell(
                    "generation",
                    top1(results, "augmented"),
                    baseline,
                    arm="augmented",
                    steps=steps,
                    guidance=guidance,
                    min_concept_score=minimum,
                    ratio=largest,
                    **trained(results),
                )
            )
    table += generation
    chosen = best(generation)
    guidance, minimum = chosen["guidance"], chosen["min_concept_score"]

    # 3. How many synthetic images per real one.
    rendered = out / "renders" / f"guidance-{guidance:g}"
    refilter(rendered, min_concept_score=minimum)
    ratios = sorted(set(settings.ratios) - {largest})
    per_ratio = [{**chosen, "stage": "ratio"}]
    if ratios:
        results = classify(
            f"guidance-{guidance:g}-min-{minimum:g}-ratios",
            synthetic=str(rendered),
            ratios=ratios,
            steps=steps,
            real_only=False,
        )
        for ratio in ratios:
            at_ratio = results[results["ratio"] == ratio]
            per_ratio.append(
                cell(
                    "ratio",
                    top1(at_ratio, "augmented"),
                    baseline,
                    arm="augmented",
                    steps=steps,
                    guidance=guidance,
                    min_concept_score=minimum,
                    ratio=ratio,
                    **trained(at_ratio),
                )
            )
    per_ratio.sort(key=lambda row: row["ratio"])  # ties go to fewer images
    table += per_ratio
    ratio = best(per_ratio)["ratio"]
    report = {
        "settings": asdict(settings),
        "evaluated_on": "validation",
        "validation_images": len(validation),
        "chosen": {
            "steps": int(steps),
            "guidance": float(guidance),
            "min_concept_score": float(minimum),
            "ratio": float(ratio),
            "images_per_class": math.ceil(ratio * settings.shots),
        },
        "table": table,
    }
    write_sweep(report, out)
    return report


def write_sweep(report: dict, out: Path) -> None:
    frame = pd.DataFrame(report["table"])
    frame.to_csv(out / "sweep.csv", index=False)
    (out / "sweep.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "sweep.md").write_text("\n".join(sweep_lines(report)) + "\n")


def read_sweep(path: str | Path) -> dict:
    """The sweep.json that `augment bench sweep` wrote (given, or in the folder given), or an
    error that says what the file is not."""
    path = Path(path)
    if path.is_dir():
        path = path / "sweep.json"
    fix = "give the sweep.json (or its folder) that `augment bench sweep` wrote"
    if not path.is_file():
        raise AugmentError(f"--sweep {path}: no such file; {fix}")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise AugmentError(f"--sweep {path} is not JSON ({first_line(exc)}); {fix}") from None
    keys = ("chosen", "settings", "validation_images", "table")
    missing = [key for key in keys if not isinstance(report, dict) or key not in report]
    if missing:
        raise AugmentError(f"--sweep {path} is not a sweep's report (no {missing[0]}); {fix}")
    return report


def sweep_lines(report: dict) -> list[str]:
    """The sweep as Markdown: what was chosen, then each stage's table."""
    chosen = report["chosen"]
    shots = report["settings"]["shots"]
    lines = [
        f"Chosen on the validation split ({report['validation_images']} real images, "
        f"{shots} real images a class for training, {report['settings']['seeds']} seeds): "
        f"{chosen['steps']} classifier steps, guidance {chosen['guidance']:g}, minimum concept "
        f"score {chosen['min_concept_score']:g}, ratio ×{chosen['ratio']:g} "
        f"({chosen['images_per_class']} synthetic images a class).",
        "",
        "| stage | steps | guidance | min concept score | ratio | validation top-1 % | "
        "gain over real-only |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def text(value, low, high, sign="") -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        # cut to where the measure lies, as the benchmarks' own intervals are (a sweep.json
        # written before that holds 100.4 %)
        floor, ceiling = metric_range("top1", gain=sign == "+")
        low, high = max(low, floor), min(high, ceiling)
        return f"{value:{sign}.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"

    def shown(row: dict, key: str) -> str:
        value = row.get(key)
        return "" if value is None or value != value else f"{value:g}"  # absent, or NaN

    for row in report["table"]:
        ratio = shown(row, "ratio")
        if (
            ratio
            and row.get("ratio_trained") is not None
            and row["ratio_trained"] == row["ratio_trained"]
        ):
            ratio += f" (trained ×{row['ratio_trained']:.2g})"
        lines.append(
            f"| {row['stage']} | {shown(row, 'steps')} | {shown(row, 'guidance')} | "
            f"{shown(row, 'min_concept_score')} | {'×' + ratio if ratio else ''} | "
            f"{text(row['top1'], row['ci_low'], row['ci_high'])} | "
            f"{text(row.get('gain'), row.get('gain_low'), row.get('gain_high'), '+')} |"
        )
    return lines
