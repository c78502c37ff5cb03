"""Report: results.parquet -> report.md + PNG plots a person would rather look at than read.

Plots: accuracy per arm (mean ± 95 % CI), the paired gain against the synthetic ratio, the
per-class gain, accuracy per WordNet node, detection mAP per arm, and sample grids of real vs
synthetic images per class. The text states what was measured, including when the synthetic
data did not help.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from augment.bench.stats import bootstrap_gain, paired_gain, summarize
from augment.errors import AugmentError, first_line

log = logging.getLogger(__name__)

ARM_ORDER = ("real_only", "augmented", "oracle", "synthetic_only")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ci_text(mean: float, low: float, high: float, unit: str = "") -> str:
    if math.isnan(low):
        return f"{mean:.1f}{unit} (one seed: no interval)"
    return f"{mean:.1f}{unit} [{low:.1f}, {high:.1f}]"


def no_nan(value):
    """`value` with every NaN float as None: JSON has no NaN (`json.dumps` writes a bare NaN,
    which strict readers such as JavaScript's JSON.parse and jq refuse)."""
    if isinstance(value, dict):
        return {key: no_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


#: Columns a results table must have (what `augment bench` writes).
RESULT_COLUMNS = ("task", "arm", "ratio", "shots", "seed", "metric", "label", "value")
#: What names one measurement: a table holds one row for each.
RESULT_KEY = RESULT_COLUMNS[:-1]


#: What a report folder holds: the report, its headline figures and its plots.
REPORT_NAMES = (
    "report.md",
    "headline.json",
    *(
        f"{plot}.png"
        for plot in (
            "classify_arms",
            "concept_quality",
            "detect_arms",
            "gain_vs_ratio",
            "per_class_gain",
            "samples",
            "wordnet_nodes",
        )
    ),
)


def read_results(path: Path) -> pd.DataFrame:
    """A results table written by `augment bench`, or an error saying what is wrong with it."""
    try:
        results = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are both
        reason = first_line(exc)
        raise AugmentError(
            f"{path} is not a readable results table ({reason}); rerun `augment bench ...` "
            "to write it again"
        ) from None
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise AugmentError(
            f"{path} is not an `augment bench` results table: no column {', '.join(missing)}"
        )
    if results.empty:
        raise AugmentError(f"{path} holds no results; rerun `augment bench ...`")
    for column in ("ratio", "shots", "seed", "value"):
        if not pd.api.types.is_numeric_dtype(results[column]):
            raise AugmentError(
                f"{path}: column {column} holds {results[column].dtype} values, not numbers; "
                "rerun `augment bench ...` to write it again"
            )
    for column in RESULT_KEY:  # a NaN seed or label left a row out of its arm's figures
        missing = results[results[column].isna()]
        if len(missing):
            raise AugmentError(
                f"{path}: column {column} is empty in {len(missing)} row(s), the first row "
                f"{missing.index[0]}; every row needs its {', '.join(RESULT_KEY)} (an empty "
                "label is '', not missing): rerun `augment bench ...` to write it again"
            )
    scored = results[results["task"].isin(["classify", "detect"])]
    infinite = scored[np.isinf(scored["value"])]
    if len(infinite):
        raise AugmentError(
            f"{path}: {len(infinite)} score(s) are infinite, the first row {infinite.index[0]}; "
            "rerun `augment bench ...` to score again"
        )
    empty = scored[scored["value"].isna()]
    if len(empty):
        first = empty.iloc[0]
        raise AugmentError(
            f"{path} holds {len(empty)} empty score(s) (NaN), the first {first['arm']} "
            f"{first['metric']} seed {first['seed']}; rerun `augment bench ...` to score again"
        )
    repeated = int(results.duplicated(list(RESULT_KEY)).sum())
    if repeated:
        raise AugmentError(
            f"{path}: {repeated} rows repeat another row's {', '.join(RESULT_KEY)}, as two tables "
            "put together would; keep one of each (pandas drop_duplicates) or rerun the bench"
        )
    return results


def arm_label(row) -> str:
    """'augmented ×1', or 'augmented ×1 (trained ×0.4)' when the synthetic set ran short;
    'oracle ×1': as many more real images (of the same classes, so short with it)."""
    if row["arm"] not in ("augmented", "oracle"):
        return row["arm"]
    label = f"{row['arm']} ×{row['ratio']:.3g}"
    trained = row.get("ratio_trained", row["ratio"])
    if not math.isclose(trained, row["ratio"], rel_tol=1e-3):
        label += f" (trained ×{trained:.2g})"
    return label


def plot_arms(summary: pd.DataFrame, metric: str, path: Path, title: str) -> Path | None:
    """Mean ± CI of `metric` per arm, one panel per shots value: points, not bars, since the
    axis is cut to the intervals (a bar from 95 % reads as ten times its neighbour's from
    90 %), with real-only's mean as a dashed line to read each arm against."""
    chosen = summary[(summary["metric"] == metric) & (summary["label"] == "")]
    if chosen.empty:
        return None
    plt = pyplot()
    shots_values = sorted(chosen["shots"].unique())
    fig, axes = plt.subplots(
        # 6 inches at least: one panel's width cut a detector's title off at both ends
        1,
        len(shots_values),
        figsize=(max(4.5 * len(shots_values), 6.0), 3.6),
        squeeze=False,
    )
    for ax, shots in zip(axes[0], shots_values, strict=True):
        rows = chosen[chosen["shots"] == shots].copy()
        rows["order"] = rows["arm"].map({a: i for i, a in enumerate(ARM_ORDER)})
        rows = rows.sort_values(["order", "ratio"])
        labels = [arm_label(r) for _, r in rows.iterrows()]
        errors = np.nan_to_num(
            np.array([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        )
        for x, (arm, mean, below, above) in enumerate(
            zip(rows["arm"], rows["mean"], errors[0], errors[1], strict=True)
        ):
            ax.errorbar(
                x,
                mean,
                yerr=[[below], [above]],
                fmt="o",
                markersize=7,
                capsize=5,
                color="#888" if arm == "real_only" else "#3a7",
            )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        baseline = rows.loc[rows["arm"] == "real_only", "mean"]
        if len(baseline):
            ax.axhline(float(baseline.iloc[0]), color="#888", linestyle="--", linewidth=1)
        low = max(0.0, float(np.nanmin(rows["ci_low"].fillna(rows["mean"]))) - 5)
        ax.set_ylim(low, min(100.0, float(np.nanmax(rows["ci_high"].fillna(rows["mean"]))) + 2))
        # a detector's rows have no shots: its real set is what `bench detect --real` gave
        ax.set_title(f"{shots} real per class" if shots else "the real training set")
        ax.set_ylabel(f"{metric} (%)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gain_vs_ratio(gains: pd.DataFrame, path: Path) -> Path | None:
    overall = gains[gains["label"] == ""]
    if overall.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for shots, rows in overall.groupby("shots"):
        rows = rows.sort_values("ratio")
        errors = np.array([rows["gain"] - rows["ci_low"], rows["ci_high"] - rows["gain"]])
        ax.errorbar(  # at the ratio each arm trained on (a short synthetic set: below the asked)
            rows["ratio_trained"],
            rows["gain"],
            yerr=np.nan_to_num(errors),
            marker="o",
            capsize=4,
            label=f"{shots} real/class",
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("synthetic images per real image (as trained)")
    ax.set_ylabel("top-1 gain over real-only (points)")
    ax.set_title("Gain vs synthetic ratio (mean ± 95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class_gain(gains: pd.DataFrame, path: Path) -> Path | None:
    per_class = gains[gains["label"] != ""]
    if per_class.empty:
        return None
    ratio = per_class["ratio"].max()
    shots = per_class["shots"].min()
    rows = per_class[(per_class["ratio"] == ratio) & (per_class["shots"] == shots)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(rows)), 3.6))
    errors = np.array([rows["gain"] - rows["ci_low"], rows["ci_high"] - rows["gain"]])
    ax.bar(
        rows["label"],
        rows["gain"],
        yerr=np.nan_to_num(errors),
        capsize=3,
        color=["#3a7" if g >= 0 else "#c44" for g in rows["gain"]],
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("accuracy gain (points)")
    trained = rows["ratio_trained"].mean()
    as_trained = f" (trained ×{trained:.2g})" if not np.isclose(trained, ratio) else ""
    ax.set_title(f"Per-class gain, ×{ratio:g} synthetic{as_trained}, {shots} real/class")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_nodes(summary: pd.DataFrame, path: Path) -> Path | None:
    nodes = summary[(summary["metric"] == "node_accuracy") & (summary["task"] == "classify")]
    if nodes.empty:
        return None
    shots = nodes["shots"].min()
    nodes = nodes[nodes["shots"] == shots].copy()
    nodes["column"] = [arm_label(r) for _, r in nodes.iterrows()]
    table = nodes.pivot_table(index="label", columns="column", values="mean")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(table.columns) + 3, 0.35 * len(table) + 1.5))
    image = ax.imshow(table.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), table.index)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label="top-1 accuracy (%)")
    ax.set_title(f"Accuracy per WordNet node ({shots} real/class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class Samples:
    """Images for the sample grid: a few real and synthetic images of each class."""

    names: list[str]
    real: list[list[np.ndarray]]
    synthetic: list[list[np.ndarray]]
    per_class: int  # columns of each side


def read_samples(real_source: str | None, synthetic: str | None, per_class: int = 6):
    """A `Samples` of `per_class` real and synthetic images a class, or None without both sets.
    Read before a report writes anything, so that a real set that cannot be read stops it
    there."""
    if not real_source or not synthetic or not (Path(synthetic) / "shards").is_dir():
        return None
    from PIL import Image

    from augment.bench.data import load_real
    from augment.sinks import export_records
    from augment.taxonomy.listfile import slugify

    real = load_real(real_source, 32)
    names = list(real.classes.names)
    fake: dict[str, list] = {slugify(n): [] for n in names}
    for record in export_records(Path(synthetic)):
        bucket = fake.get(slugify(record["concept_name"]))
        if bucket is not None and len(bucket) < per_class:
            bucket.append(
                np.asarray(Image.open(io.BytesIO(record["image"]["bytes"])).convert("RGB"))
            )
    reals = [
        list(real.pool.images[real.pool.labels == row][:per_class]) for row in range(len(names))
    ]
    return Samples(names, reals, [fake[slugify(n)] for n in names], per_class)


def plot_samples(samples: Samples | None, path: Path):
    """Rows of real (left) and synthetic (right) images for each class."""
    if samples is None:
        return None
    per_class = samples.per_class
    plt = pyplot()
    fig, axes = plt.subplots(
        len(samples.names),
        2 * per_class,
        figsize=(2 * per_class * 0.6, len(samples.names) * 0.65),
        squeeze=False,
    )
    for row, name in enumerate(samples.names):
        for col in range(2 * per_class):
            ax = axes[row, col]
            ax.axis("off")
            source = samples.real[row] if col < per_class else samples.synthetic[row]
            index = col % per_class
            if index < len(source):
                ax.imshow(source[index])
        axes[row, 0].set_title(name, fontsize=7, loc="left")
    fig.suptitle("real (left) vs synthetic (right)", fontsize=9)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: The per-concept quality columns of the report, as results metrics name them.
QUALITY_COLUMNS = {
    "fidelity": "read as its concept %",
    "flagged": "flagged %",
    "filtered_rate": "filtered %",
    "duplicate_rate": "duplicates %",
    "diversity": "diversity",
    "real_diversity": "real diversity",
    "kid": "KID x1000",
}


def quality_table(results: pd.DataFrame) -> pd.DataFrame:
    """The synthetic set's per-concept quality (task `quality`), worst fidelity first."""
    quality = results[(results["task"] == "quality") & (results["metric"] != "node_fidelity")]
    if quality.empty:
        return pd.DataFrame()
    table = quality.pivot_table(index="label", columns="metric", values="value")
    table = table.sort_values("fidelity") if "fidelity" in table else table
    for column in ("fidelity", "flagged", "filtered_rate", "duplicate_rate"):
        if column in table:
            table[column] = 100.0 * table[column]
    columns = [c for c in QUALITY_COLUMNS if c in table]
    digits = {"fidelity": 1, "flagged": 1, "filtered_rate": 1, "duplicate_rate": 1, "kid": 1}
    table = table[columns].round({c: digits.get(c, 3) for c in columns})
    table = table.rename(columns=QUALITY_COLUMNS)
    return table.reset_index().rename(columns={"label": "concept"})


def plot_quality(results: pd.DataFrame, path: Path) -> Path | None:
    """Fidelity per concept (worst first) beside fidelity per WordNet node."""
    quality = results[results["task"] == "quality"]
    concepts = quality[quality["metric"] == "fidelity"].sort_values("value")
    nodes = quality[quality["metric"] == "node_fidelity"].sort_values("value")
    if concepts.empty:
        return None
    plt = pyplot()
    height = 0.3 * max(len(concepts), len(nodes)) + 1.5
    fig, axes = plt.subplots(1, 2 if len(nodes) else 1, figsize=(10, height), squeeze=False)
    for ax, frame, title in (
        (axes[0, 0], concepts, "per concept"),
        *(((axes[0, 1], nodes, "per WordNet node"),) if len(nodes) else ()),
    ):
        ax.barh(frame["label"], 100.0 * frame["value"], color="tab:blue")
        ax.set_xlim(0, 100)
        ax.set_xlabel("images the scorer reads as their concept (%)")
        ax.set_title(f"Fidelity {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def oracle_figures(results: pd.DataFrame, shots: int) -> dict:
    """At the largest ratio with an oracle arm: the gain of real images instead of synthetic
    ones, and the share of it the synthetic images recover (their gain over the oracle's),
    given only when the oracle's gain is measurable (its 95 % CI above 0)."""
    oracle = paired_gain(results, "top1", arm="oracle")
    oracle = oracle[(oracle["label"] == "") & (oracle["shots"] == shots)]
    synthetic = paired_gain(results, "top1")
    synthetic = synthetic[(synthetic["label"] == "") & (synthetic["shots"] == shots)]
    if oracle.empty:
        return {}
    best = oracle.sort_values("ratio").iloc[-1]
    figures = {
        "oracle_gain": {
            "mean": best["gain"],
            "ci_low": best["ci_low"],
            "ci_high": best["ci_high"],
            "ratio": float(best["ratio"]),
        }
    }
    same = synthetic[synthetic["ratio"] == best["ratio"]]
    # Synthetic against as many real images, paired by seed: the comparison itself, with its
    # interval (the share below divides by the oracle's gain, whose interval may reach 0).
    versus = paired_gain(results[results["ratio"] == best["ratio"]], "top1", baseline="oracle")
    versus = versus[(versus["label"] == "") & (versus["shots"] == shots)]
    if not versus.empty:
        row = versus.iloc[0]
        figures["synthetic_vs_oracle"] = {
            "mean": float(row["gain"]),
            "ci_low": float(row["ci_low"]),
            "ci_high": float(row["ci_high"]),
            "ratio": float(best["ratio"]),
            "n_pairs": int(row["n_pairs"]),
        }
    # A share of a gain that may be 0 means nothing: +5 points of a +0.4 oracle read 1250 %.
    if not same.empty and best["ci_low"] > 0:
        figures["recovered"] = {
            "ratio": float(best["ratio"]),
            "synthetic_gain": float(same.iloc[0]["gain"]),
            "real_gain": float(best["gain"]),
            "share": float(same.iloc[0]["gain"] / best["gain"]),
        }
    return figures


def scored_models(predictions: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The predictions of the models the results table holds (task, arm, ratio, shots, seed):
    a table a user cut (a seed dropped, an arm removed) keeps its predictions.parquet beside
    it, whose other models' predictions went into the gain's second interval."""
    keys = ["task", "arm", "ratio", "shots", "seed"]
    held = results[results["metric"] == "top1"][keys].drop_duplicates()
    return predictions.merge(held, on=keys, how="inner")


#: The plots a report may draw: one left from a last report into the same folder goes.
PLOT_FILES = frozenset(
    {
        "classify_arms.png",
        "gain_vs_ratio.png",
        "per_class_gain.png",
        "wordnet_nodes.png",
        "detect_arms.png",
        "samples.png",
        "concept_quality.png",
    }
)


def headline(results: pd.DataFrame, predictions: pd.DataFrame | None = None) -> dict:
    """The figures a reader wants first: classifier top-1 per arm, the gain, detection mAP.
    With the classifiers' `predictions` (predictions.parquet), the gain's interval resampling
    test images and seeds together too (`bootstrap_gain`)."""
    summary = summarize(results)
    figures: dict = {}
    top1 = summary[(summary["metric"] == "top1") & (summary["label"] == "")]
    if not top1.empty:
        shots = 10 if 10 in set(top1["shots"]) else int(top1["shots"].min())
        figures["shots"] = shots
        rows = top1[top1["shots"] == shots]
        for arm in ARM_ORDER:
            chosen = rows[rows["arm"] == arm].sort_values("ratio")
            if not chosen.empty:  # augmented: the largest ratio, all the synthetic data used
                best = chosen.iloc[-1]
                figures[arm] = {
                    "mean": best["mean"],
                    "ci_low": best["ci_low"],
                    "ci_high": best["ci_high"],
                    "n_seeds": int(best["n_seeds"]),
                    "ratio": float(best["ratio"]),
                    "ratio_trained": float(best["ratio_trained"]),
                    "label": arm_label(best),
                }
        gains = paired_gain(results, "top1")
        gains = gains[(gains["label"] == "") & (gains["shots"] == shots)]
        if not gains.empty and "augmented" in figures:
            gain = gains[gains["ratio"] == figures["augmented"]["ratio"]].iloc[0]
            figures["gain"] = {
                "mean": gain["gain"],
                "ci_low": gain["ci_low"],
                "ci_high": gain["ci_high"],
                "ratio": float(gain["ratio"]),
            }
            both = (
                bootstrap_gain(scored_models(predictions, results), float(gain["ratio"]), shots)
                if predictions is not None
                else None
            )
            if both is not None:
                figures["gain"]["bootstrap"] = both
        figures.update(oracle_figures(results, shots))
    for metric, name in (("map50_95", "detector"), ("mask_map50_95", "detector_mask")):
        detection = summary[(summary["task"] == "detect") & (summary["metric"] == metric)]
        detection = detection[detection["label"] == ""]
        if detection.empty:
            continue
        figures["detector_evaluated_on"] = scored_split(results, "detect")
        figures[f"{name}_map50_95"] = {
            arm_label(r): {
                "mean": r["mean"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "n_seeds": int(r["n_seeds"]),
            }
            for _, r in detection.iterrows()
        }
        gains = paired_gain(results[results["task"] == "detect"], metric)
        gains = gains[gains["label"] == ""]
        if not gains.empty:
            gain = gains.iloc[-1]
            figures[f"{name}_gain"] = {
                "mean": gain["gain"],
                "ci_low": gain["ci_low"],
                "ci_high": gain["ci_high"],
                "n_pairs": int(gain["n_pairs"]),
            }
    return figures


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


#: What an interval says, by where it lies: above 0, below 0, across it.
GAIN_WORDS = (
    "real + synthetic beats real-only: the 95 % CI excludes 0",
    "real + synthetic is worse than real-only: the 95 % CI is below 0",
    "no measurable gain: the 95 % CI includes 0",
)
ORACLE_WORDS = (
    "synthetic images did better than as many real ones (the 95 % CI excludes 0)",
    "synthetic images did worse than as many real ones (the 95 % CI is below 0)",
    "no measurable difference from as many real images (the 95 % CI includes 0)",
)


def verdict(gain: dict, words: tuple[str, str, str] = GAIN_WORDS) -> str:
    """What a paired difference says, by its interval (`words`: above, below, across 0)."""
    if math.isnan(gain["ci_low"]):
        return "one seed only: no confidence interval, no conclusion"
    if gain["ci_low"] == gain["ci_high"]:  # a t-interval of zero width claims certainty
        return "every seed gave the same difference, so the seeds give no interval: no conclusion"
    above, below, across = words
    return above if gain["ci_low"] > 0 else below if gain["ci_high"] < 0 else across


def synthetic_set_lines(synthetic: str | None) -> list[str]:
    """What the synthetic set is: images generated, flagged, and by which filter (its shards)."""
    from augment.records import FLAGS
    from augment.sinks import run_filters
    from augment.sinks.parquet import count_true, shard_paths

    if not synthetic or not shard_paths(Path(synthetic) / "shards"):
        return []
    rows, counts = count_true(Path(synthetic) / "shards", list(FLAGS))
    flags = ", ".join(f"{counts[flag]} {flag}" for flag in ("black", "nan", "nsfw"))
    line = f"Synthetic set: `{synthetic}`, {rows} images generated ({flags}"
    filters = run_filters(Path(synthetic))  # the last `augment filter`'s, else the job's
    if filters.get("scorer"):
        line += (
            f"; {counts['filtered']} filtered by `{filters['scorer']}` under a concept "
            f"score of {filters['min_concept_score']:g}"
        )
    return [line + "); flagged images are not trained on.", ""]


def read_settings(path: Path) -> dict:
    """The benchmark settings saved beside the results (for sample grids); {} if unreadable."""
    try:
        settings = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def scored_split(results: pd.DataFrame, task: str = "classify") -> str:
    """The real split the `task` rows were scored on (for a table from before the column: the
    classifier's test, the detector's val), or an error for a table that mixes splits: its arms
    would not compare."""
    rows = results[results["task"] == task]
    before = "test" if task == "classify" else "validation"
    if "evaluated_on" not in rows or rows.empty:
        return before
    splits = sorted({str(value) for value in rows["evaluated_on"].dropna()}) or [before]
    if len(splits) > 1:
        kind = "classifier" if task == "classify" else "detector"
        raise AugmentError(
            f"the results mix {kind} rows scored on {' and '.join(splits)} splits "
            "(evaluated_on); report each benchmark's own results.parquet"
        )
    return splits[0]


def scored_words(split: str) -> str:
    """What a report says of the split its figures were scored on."""
    if split == "test":
        return "the held-out real test split"
    return "the real validation split (settings are chosen there: these are not held-out figures)"


def settings_not_chosen(
    chosen: dict, classify: dict, synthetic: str | Path | None, swept: dict | None = None
) -> list[str]:
    """How the benchmark behind a report differs from what the sweep chose: its classifier
    steps and ratios (its settings.json), the synthetic run's guidance and filter minimum (the
    run's job.yaml), and what the sweep held fixed (`swept`, its settings: the real set, the
    shots, the image size). Empty when they agree, or where a setting cannot be read."""
    differences = []
    steps, ratios = classify.get("steps"), classify.get("ratios")
    if isinstance(steps, int) and steps != chosen["steps"]:
        differences.append(f"{steps} classifier steps, not {chosen['steps']}")
    if isinstance(ratios, list) and ratios and max(ratios) != chosen["ratio"]:
        differences.append(f"ratio ×{max(ratios):g}, not ×{chosen['ratio']:g}")
    swept = swept or {}
    shots = classify.get("shots")
    if isinstance(shots, list) and shots and swept.get("shots") not in (None, *shots):
        differences.append(f"{', '.join(map(str, shots))} shots, not {swept['shots']}")
    for key, name in (("image_size", "px images"), ("real", "real set")):
        mine, theirs = classify.get(key), swept.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            differences.append(
                f"{name} {mine}, not {theirs}" if key == "real" else f"{mine} {name}, not {theirs}"
            )
    if not synthetic or not (Path(synthetic) / "job.yaml").is_file():
        return differences
    from augment.sinks.rows import read_saved_spec, run_filters

    try:
        guidance = read_saved_spec(Path(synthetic))["generation"]["guidance_scale"]
        minimum = run_filters(Path(synthetic))["min_concept_score"]  # after `augment filter`
    except (AugmentError, KeyError, TypeError):
        return differences
    if isinstance(guidance, int | float) and guidance != chosen["guidance"]:
        differences.append(f"guidance {guidance:g}, not {chosen['guidance']:g}")
    if isinstance(minimum, int | float) and minimum != chosen["min_concept_score"]:
        differences.append(
            f"minimum concept score {minimum:g}, not {chosen['min_concept_score']:g}"
        )
    return differences


def detector_learnt_nothing(results: pd.DataFrame) -> list[str]:
    """Detector arms that scored mAP50:95 0 in every seed: they learnt nothing, and comparing
    them says nothing either."""
    summary = summarize(results)
    chosen = summary[
        (summary["task"] == "detect") & (summary["metric"] == "map50_95") & (summary["label"] == "")
    ]
    return [arm_label(r) for _, r in chosen.iterrows() if r["mean"] == 0]


def write_report(
    results_path: Path,
    out_dir: Path,
    real: str | None = None,
    synthetic: str | None = None,
    sweep: Path | None = None,
) -> Path:
    """Write OUT/report.md and its PNG plots from a results table (with the validation sweep
    that chose the settings, when its sweep.json, or the folder holding it, is given)."""
    results = read_results(results_path)
    if sweep is not None:  # read before anything is written
        from augment.bench.sweep import read_sweep

        chosen = read_sweep(sweep)
    settings = read_settings(results_path.parent / "settings.json")
    classify_settings = settings.get("classify")
    if not isinstance(classify_settings, dict):  # another tool's settings.json
        classify_settings = {}
    if real and not (synthetic or classify_settings.get("synthetic")):  # asked, not drawable
        log.warning(
            "no sample grid: it shows the real set beside a synthetic one, and these results "
            "name none; give --synthetic (the run's output folder) too"
        )
    real = real or classify_settings.get("real")
    synthetic = synthetic or classify_settings.get("synthetic")
    samples = read_samples(real, synthetic)
    from augment.sinks import check_own_folder

    check_own_folder(out_dir, REPORT_NAMES, "report", writer="augment report")  # overwritten
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    gains = paired_gain(results, "top1")
    class_gains = paired_gain(results, "class_accuracy")
    predictions = results_path.with_name("predictions.parquet")  # beside it: classify's
    figures = headline(results, pd.read_parquet(predictions) if predictions.is_file() else None)
    split, detect_split = scored_split(results), scored_split(results, "detect")
    plots = {
        "arms": plot_arms(
            summary[summary["task"] == "classify"],
            "top1",
            out_dir / "classify_arms.png",
            f"Classifier top-1 on the real {split} split (mean ± 95% CI)",
        ),
        "gain": plot_gain_vs_ratio(gains, out_dir / "gain_vs_ratio.png"),
        "per_class": plot_per_class_gain(class_gains, out_dir / "per_class_gain.png"),
        "nodes": plot_nodes(summary, out_dir / "wordnet_nodes.png"),
        "detect": plot_arms(
            summary[summary["task"] == "detect"],
            "map50_95",
            out_dir / "detect_arms.png",
            f"Detector mAP50:95 on the real {detect_split} split (mean ± 95% CI)",
        ),
        "samples": plot_samples(samples, out_dir / "samples.png"),
        "quality": plot_quality(results, out_dir / "concept_quality.png"),
    }
    drawn = {path.name for path in plots.values() if path is not None}
    for name in PLOT_FILES - drawn:  # a last report's plot this table has nothing for
        (out_dir / name).unlink(missing_ok=True)
    lines = ["# augment benchmark report", ""]
    if "real_only" in figures:
        lines += [
            f"Classifier, {figures['shots']} real images per class, top-1 on "
            f"{scored_words(split)}, mean "
            "[95 % CI] over training seeds (the test images fixed: the interval says how much "
            "training varies, not how much another test set would):",
            "",
        ]
        for arm in ARM_ORDER:
            if arm in figures:
                f = figures[arm]
                lines.append(
                    f"- **{f['label']}**: {ci_text(f['mean'], f['ci_low'], f['ci_high'], ' %')}"
                    f" ({f['n_seeds']} seeds)"
                )
        if "gain" in figures:
            g = figures["gain"]
            line = (
                f"**Paired gain** ({figures['augmented']['label']} − real-only, same seeds): "
                f"{ci_text(g['mean'], g['ci_low'], g['ci_high'], ' points')}"
            )
            if "bootstrap" in g:  # the wider question: another test set of this size too
                b = g["bootstrap"]
                line += (
                    f"; [{b['ci_low']:.1f}, {b['ci_high']:.1f}] resampling the {b['n_images']} "
                    f"test images with the seeds: {verdict(b)}."
                )
            else:
                line += f": {verdict(g)}."
            lines += ["", line]
        if "oracle_gain" in figures:
            o = figures["oracle_gain"]
            lines += [
                "",
                f"**Real images instead** (oracle ×{o['ratio']:g}: as many more real images "
                f"from the pool as augmented ×{o['ratio']:g} adds synthetic ones): "
                f"{ci_text(o['mean'], o['ci_low'], o['ci_high'], ' points')} over real-only.",
            ]
            if "synthetic_vs_oracle" in figures:
                v = figures["synthetic_vs_oracle"]
                lines[-1] += (
                    f" Synthetic images against as many real ones (augmented ×{v['ratio']:g} − "
                    f"oracle ×{v['ratio']:g}, same seeds): "
                    f"{ci_text(v['mean'], v['ci_low'], v['ci_high'], ' points')}: "
                    f"{verdict(v, ORACLE_WORDS)}."
                )
            if "recovered" in figures:
                r = figures["recovered"]
                lines[-1] += (
                    f" As a share, synthetic images at ×{r['ratio']:g} recover "
                    f"{100 * r['share']:.0f} % of the real images' gain "
                    f"({r['synthetic_gain']:+.1f} of {r['real_gain']:+.1f} points): a ratio of "
                    "two estimates, which the difference above states with its interval."
                )
        lines.append("")
    lines += synthetic_set_lines(synthetic)
    top1 = summary[(summary["metric"] == "top1") & (summary["label"] == "")]
    short = sorted({arm_label(r) for _, r in top1.iterrows() if "trained" in arm_label(r)})
    if short:
        lines += [
            f"The synthetic set was too small for {', '.join(short)}: each arm trained on the "
            "ratio in brackets (`ratio_trained` in the results), not on the one asked.",
            "",
        ]
    if zero := detector_learnt_nothing(results):
        lines += [
            f"**Detector {', '.join(zero)}: mAP 0.0 in every seed.** It learnt nothing at this "
            "training length, so this comparison says nothing; train longer (--epochs).",
            "",
        ]
    overall = summary[summary["label"] == ""].copy()
    overall["value"] = [
        ci_text(r["mean"], r["ci_low"], r["ci_high"]) for _, r in overall.iterrows()
    ]
    for column in ("ratio", "ratio_trained"):
        overall[column] = [f"{value:.3g}" for value in overall[column]]
    columns = ["task", "arm", "ratio", "ratio_trained", "shots", "metric", "value", "n_seeds"]
    if sweep is not None:
        from augment.bench.sweep import sweep_lines

        differences = settings_not_chosen(
            chosen["chosen"], classify_settings, synthetic, chosen.get("settings")
        )
        if differences:
            scored = (
                "the figures above were **not** scored with the chosen settings ("
                + "; ".join(differences)
                + "), so this sweep did not choose them"
            )
        elif split == "test":
            scored = "the test figures above were scored with the chosen settings"
        else:
            scored = "the figures above are on the validation split the sweep chose on"
        if not differences and not (synthetic and (Path(synthetic) / "job.yaml").is_file()):
            scored += (
                " (the synthetic run's guidance and filter minimum could not be checked: "
                "no job.yaml in the synthetic folder)"
            )
        lines += [
            "## Settings chosen on validation",
            "",
            f"By `augment bench sweep` (each stage fixes what the one before chose); {scored}.",
            "",
            *sweep_lines(chosen),
            "",
        ]
    lines += ["## All arms", "", markdown_table(overall[columns]), ""]
    if not gains.empty:
        table = gains[gains["label"] == ""].copy()
        table["gain"] = [ci_text(r["gain"], r["ci_low"], r["ci_high"]) for _, r in table.iterrows()]
        table["ratio"] = [f"{value:.3g}" for value in table["ratio"]]
        lines += [
            "## Paired gain in top-1 (points)",
            "",
            markdown_table(table[["shots", "ratio", "gain", "n_pairs"]]),
            "",
        ]
    for metric in ("map50_95", "mask_map50_95"):
        detected = paired_gain(results[results["task"] == "detect"], metric)
        detected = detected[detected["label"] == ""]
        if not detected.empty:
            detected["gain"] = [
                ci_text(r["gain"], r["ci_low"], r["ci_high"]) for _, r in detected.iterrows()
            ]
            detected["ratio"] = [f"{value:.3g}" for value in detected["ratio"]]
            lines += [
                f"## Paired gain in detector {metric} (points)",
                "",
                f"Augmented − real-only, paired by seed, on {scored_words(detect_split)}:",
                "",
                markdown_table(detected[["ratio", "gain", "n_pairs"]]),
                "",
            ]
    per_class = summary[summary["metric"] == "class_accuracy"].copy()
    if not per_class.empty:
        per_class["column"] = [f"{arm_label(r)} @{r['shots']}" for _, r in per_class.iterrows()]
        pivot = per_class.pivot_table(index="label", columns="column", values="mean").round(1)
        lines += ["## Per-class accuracy (%)", "", markdown_table(pivot.reset_index()), ""]
    quality = quality_table(results)
    if not quality.empty:
        lines += [
            "## Synthetic images per concept, worst first",
            "",
            "How often the run's scorer reads a concept's images as that concept (Stöckl "
            "2022's fidelity), the share flagged and the share that repeat another image, "
            "the mean cosine distance between two images on the scorer's features (diversity) "
            "beside the same on the concept's real pool images, and the kernel inception "
            "distance between the two sets on those features (0: alike).",
            "",
            markdown_table(quality),
            "",
        ]
    for name, title in (
        ("arms", "Classifier arms"),
        ("gain", "Gain vs ratio"),
        ("per_class", "Per-class gain"),
        ("nodes", "WordNet nodes"),
        ("detect", "Detector arms"),
        ("samples", "Samples"),
        ("quality", "Fidelity per concept and WordNet node"),
    ):
        if plots[name] is not None:
            lines += [f"## {title}", "", f"![{title}]({plots[name].name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    (out_dir / "headline.json").write_text(json.dumps(no_nan(figures), indent=2, default=float))
    return path
