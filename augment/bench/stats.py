"""Statistics a reviewer accepts: mean ± 95 % t-interval across seeds, and the paired gain.

A gain from one seed is noise. Each arm is run with k seeds; the seed fixes the real subset, the
synthetic sample and the model's initialisation, so `augmented - real_only` at the same
(shots, seed) is a paired difference, and its t-interval is the gain's confidence interval over
training seeds. `bootstrap_gain` widens it to the test images too, resampled with the seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: Metrics that are percentages (accuracies, F1, AP, rates): their value lies in [0, 100].
PERCENT_METRICS = frozenset(
    {
        "top1",
        "macro_f1",
        "class_accuracy",
        "node_accuracy",
        "map50",
        "map50_95",
        "ultralytics_map50",
        "ultralytics_map50_95",
        "class_ap",
        "mask_map50",
        "mask_map50_95",
        "ultralytics_mask_map50_95",
        "mask_class_ap",
        "fidelity",
        "node_fidelity",
        "flagged",
    }
)


def metric_range(metric: str, gain: bool = False) -> tuple[float, float]:
    """Where a metric's values (or a gain in it, a difference of two) can lie."""
    if metric in PERCENT_METRICS or metric.endswith("_rate"):
        return (-100.0, 100.0) if gain else (0.0, 100.0)
    return (-math.inf, math.inf)


def mean_ci(
    values, confidence: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float, float]:
    """(mean, low, high) of the t-interval; a single value has an interval of NaN width.

    The interval is cut to `bounds`, where the quantity can lie: with few seeds a t-interval
    on an accuracy near 100 % reaches past it, and the cut one still holds the true value as
    often, since the part cut away cannot.
    """
    from scipy import stats

    values = np.asarray(list(values), dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values))
    return mean, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def summarize(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (task, arm, ratio, shots, metric, label): mean, ci_low, ci_high, n_seeds,
    and the ratio the arm trained on (`ratio_trained`, the asked one in older tables)."""
    keys = ["task", "arm", "ratio", "shots", "metric", "label"]
    rows = []
    for key, group in results.groupby(keys, dropna=False, sort=True):
        mean, low, high = mean_ci(group["value"], confidence, metric_range(key[4]))
        trained = (
            group["ratio_trained"].fillna(group["ratio"])
            if "ratio_trained" in group
            else group["ratio"]
        )
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": group["seed"].nunique(),
                "ratio_trained": float(trained.mean()),
            }
        )
    columns = [*keys, "mean", "ci_low", "ci_high", "n_seeds", "ratio_trained"]
    return pd.DataFrame(rows, columns=columns)  # its columns even when empty


def paired_gain(
    results: pd.DataFrame,
    metric: str,
    arm: str = "augmented",
    baseline: str = "real_only",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Gain of `arm` over `baseline`, paired by (task, shots, seed, label), per ratio. A
    baseline with ratios of its own (the oracle: as many more real images as the augmented arm
    adds at that ratio) is paired at the same ratio too: augmented ×30 against oracle ×1 was
    reported as the ×30 row."""
    chosen = results[results["metric"] == metric]
    baseline_rows = chosen[chosen["arm"] == baseline]
    by_ratio = bool((baseline_rows["ratio"] != 0).any())
    pairing = ["task", *(["ratio"] if by_ratio else []), "shots", "seed", "label"]
    base = baseline_rows.set_index(pairing)["value"]
    rows = []
    treated = chosen[chosen["arm"] == arm]
    for (task, ratio, shots, label), group in treated.groupby(
        ["task", "ratio", "shots", "label"], dropna=False, sort=True
    ):
        keys = [
            (task, *([ratio] if by_ratio else []), shots, seed, label) for seed in group["seed"]
        ]
        present = [k in base.index for k in keys]
        if not any(present):
            continue
        diffs = (
            group["value"].to_numpy()[present]
            - base.loc[[k for k, p in zip(keys, present, strict=True) if p]].to_numpy()
        )
        mean, low, high = mean_ci(diffs, confidence, metric_range(metric, gain=True))
        trained = group["ratio_trained"].fillna(ratio) if "ratio_trained" in group else None
        rows.append(
            {
                "task": task,
                "arm": arm,
                "ratio": ratio,
                "ratio_trained": ratio if trained is None else float(trained.mean()),
                "shots": shots,
                "metric": metric,
                "label": label,
                "gain": mean,
                "ci_low": low,
                "ci_high": high,
                "n_pairs": len(diffs),
            }
        )
    columns = ["task", "arm", "ratio", "ratio_trained", "shots", "metric", "label", "gain"]
    return pd.DataFrame(rows, columns=[*columns, "ci_low", "ci_high", "n_pairs"])  # even empty


def bootstrap_gain(
    predictions: pd.DataFrame,
    ratio: float,
    shots: int,
    arm: str = "augmented",
    baseline: str = "real_only",
    resamples: int = 4000,
    confidence: float = 0.95,
) -> dict | None:
    """The paired gain in top-1 (points) of `arm` at `ratio` over `baseline`, with a percentile
    interval from resampling the training seeds and the test images together (the same images
    for both arms, so the difference stays paired). The seeds' t-interval says how much
    training varies on one test set; this one also how much another test set of this size
    would move the figure. None where the predictions do not hold both arms at those shots."""
    chosen = predictions[(predictions["task"] == "classify") & (predictions["shots"] == shots)]
    treated = chosen[(chosen["arm"] == arm) & np.isclose(chosen["ratio"], ratio)]
    base = chosen[chosen["arm"] == baseline]
    seeds = sorted(set(treated["seed"]) & set(base["seed"]))
    if not seeds:
        return None

    def correct(rows: pd.DataFrame) -> np.ndarray:  # seeds x images, images by id
        rows = rows[rows["seed"].isin(seeds)].assign(right=lambda r: r["label"] == r["prediction"])
        table = rows.pivot_table(index="seed", columns="image_id", values="right", aggfunc="first")
        return table.loc[seeds].to_numpy(dtype=float)

    a, b = correct(treated), correct(base)
    if a.shape != b.shape or np.isnan(a).any() or np.isnan(b).any():
        return None  # not scored on the same images
    differences = 100.0 * (a - b)
    rng = np.random.default_rng(0)
    n_seeds, n_images = differences.shape
    draws = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, n_seeds, n_seeds)
        columns = rng.integers(0, n_images, n_images)
        draws[r] = differences[rows][:, columns].mean()
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {
        "mean": float(differences.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n_seeds": n_seeds,
        "n_images": n_images,
    }
