"""Benchmarks: statistics on known inputs, no leak into the test split, classify + report."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import augment as ag
from augment.bench.classify import ClassifySettings, few_shot, run_classify
from augment.bench.data import ImageSet, check_no_leak, load_real
from augment.bench.stats import mean_ci, paired_gain, summarize
from augment.errors import AugmentError
from augment.records import FLAGS
from tests.conftest import DIGITS, TINY_JOB, cli, error_line, write_fake_run


def test_mean_ci_matches_the_t_interval_by_hand():
    mean, low, high = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert mean == 3 and low == pytest.approx(3 - half) and high == pytest.approx(3 + half)
    single = mean_ci([7.0])
    assert single[0] == 7.0 and math.isnan(single[1])


def test_paired_gain_pairs_by_seed():
    rows = []
    for seed, (base, aug) in enumerate([(80, 83), (82, 86), (84, 85)]):
        for arm, value in (("real_only", base), ("augmented", aug)):
            rows.append(
                {
                    "task": "classify",
                    "arm": arm,
                    "ratio": 1.0 if arm == "augmented" else 0.0,
                    "shots": 10,
                    "seed": seed,
                    "metric": "top1",
                    "label": "",
                    "value": value,
                }
            )
    rows.append({**rows[-1], "seed": 9, "value": 99.0})  # unpaired: ignored
    (gain,) = paired_gain(pd.DataFrame(rows), "top1").to_dict("records")
    half = 4.3026527 * np.std([3, 4, 1], ddof=1) / math.sqrt(3)
    assert gain["gain"] == pytest.approx(8 / 3) and gain["n_pairs"] == 3
    assert gain["ci_low"] == pytest.approx(8 / 3 - half) and gain["ci_high"] == pytest.approx(
        8 / 3 + half
    )
    summary = summarize(pd.DataFrame(rows[:-1]))
    assert set(summary["n_seeds"]) == {3}


def classify_rows(values: dict[str, list[float]]) -> pd.DataFrame:
    """A classify results table: top-1 per seed for each arm (the augmented and oracle at ×1)."""
    return pd.DataFrame(
        {
            "task": "classify",
            "arm": arm,
            "ratio": 0.0 if arm == "real_only" else 1.0,
            "shots": 10,
            "seed": seed,
            "metric": "top1",
            "label": "",
            "value": value,
        }
        for arm, per_seed in values.items()
        for seed, value in enumerate(per_seed)
    )


def test_intervals_stay_where_an_accuracy_can_be():
    results = classify_rows({"real_only": [99.0, 100.0, 97.0], "augmented": [100.0, 100.0, 99.0]})
    summary = summarize(results).set_index("arm")
    assert summary.loc["augmented", "ci_high"] == 100.0  # the t-interval reaches 101.1
    assert summary.loc["real_only", "ci_low"] == pytest.approx(98.67 - 3.79, abs=0.01)
    # a gain in points lies in [-100, 100]; an unbounded measure keeps its whole interval
    huge = classify_rows({"real_only": [0.0, 0.0], "augmented": [100.0, 90.0]})
    (gain,) = paired_gain(huge, "top1").to_dict("records")
    assert gain["ci_high"] == 100.0 and gain["ci_low"] == pytest.approx(95 - 63.53, abs=0.01)
    kid = huge.assign(metric="kid")
    assert summarize(kid).set_index("arm").loc["augmented", "ci_high"] > 100


def test_seeds_that_all_agree_give_no_conclusion(tmp_path):
    """Two seeds gaining 1.0 point each made a zero-width interval, [1.0, 1.0], and the report
    said the gain was real: the seeds had shown no spread, not certainty."""
    from augment.reporting import write_report

    results = classify_rows({"real_only": [90.0, 85.0], "augmented": [91.0, 86.0]})
    results.to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path / "results.parquet", tmp_path / "report").read_text()
    assert "1.0 points [1.0, 1.0]: every seed gave the same difference" in " ".join(text.split())
    assert "CI excludes 0" not in text

    one_seed = classify_rows({"real_only": [90.0], "augmented": [91.0]})  # no interval: null
    one_seed.to_parquet(tmp_path / "results.parquet")
    write_report(tmp_path / "results.parquet", tmp_path / "report")

    def strict(constant):
        raise ValueError(f"{constant} is not JSON")

    headline = (tmp_path / "report" / "headline.json").read_text()
    assert json.loads(headline, parse_constant=strict)["gain"]["ci_low"] is None


def test_the_gain_is_also_given_resampling_test_images_with_the_seeds(tmp_path):
    """The seeds' t-interval says how much training varies on one test set of 300 digits;
    three more right answers in each of two seeds read as certain. Resampling the test images
    too gives the interval another test set of that size would."""
    from augment.bench.stats import bootstrap_gain
    from augment.reporting import write_report

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 300)
    rows = []
    for seed in (0, 1):
        base = np.where(rng.random(300) < 0.85, labels, (labels + 1) % 10)
        better = base.copy()
        wrong = np.flatnonzero(base != labels)
        better[wrong[:3]] = labels[wrong[:3]]  # 3 of 300 more right: +1.0 point, each seed
        for arm, ratio, predicted in (("real_only", 0.0, base), ("augmented", 1.0, better)):
            rows.append(
                pd.DataFrame(
                    {
                        "task": "classify",
                        "arm": arm,
                        "ratio": ratio,
                        "shots": 10,
                        "seed": seed,
                        "image_id": [f"t{i}" for i in range(300)],
                        "label": labels,
                        "prediction": predicted,
                    }
                )
            )
    predictions = pd.concat(rows)
    both = bootstrap_gain(predictions, 1.0, 10)
    assert both["mean"] == pytest.approx(1.0) and (both["n_seeds"], both["n_images"]) == (2, 300)
    assert 0 <= both["ci_low"] < 1.0 < both["ci_high"]  # only gains: never below 0
    truth = predictions.assign(right=predictions["label"] == predictions["prediction"])
    top1 = truth.groupby(["arm", "ratio", "seed"])["right"].mean().mul(100).reset_index()
    results = top1.rename(columns={"right": "value"}).assign(
        task="classify", shots=10, metric="top1", label=""
    )
    results.to_parquet(tmp_path / "results.parquet")
    predictions.to_parquet(tmp_path / "predictions.parquet")
    text = " ".join(write_report(tmp_path / "results.parquet", tmp_path / "r").read_text().split())
    assert "1.0 points [1.0, 1.0]; [" in text and "resampling the 300 test images with the" in text
    # a table cut by hand (seed 1 of the augmented arm dropped) keeps the predictions.parquet
    # beside it: the dropped model's predictions went into the second interval
    results[~((results["arm"] == "augmented") & (results["seed"] == 1))].to_parquet(
        tmp_path / "results.parquet"
    )
    from augment.reporting import headline, scored_models

    cut = pd.read_parquet(tmp_path / "results.parquet")
    kept = scored_models(predictions, cut)
    assert set(zip(kept["arm"], kept["seed"], strict=True)) == {
        ("real_only", 0),
        ("real_only", 1),
        ("augmented", 0),
    }
    assert headline(cut, predictions)["gain"]["bootstrap"]["n_seeds"] == 1


def test_a_report_into_the_same_folder_leaves_no_plot_of_the_last_table(tmp_path):
    """A second table's report kept the first one's gain_vs_ratio.png beside it."""
    from augment.reporting import write_report

    table = classify_rows({"real_only": [80.0, 81.0], "augmented": [82.0, 84.0]})
    table.to_parquet(tmp_path / "both.parquet")
    write_report(tmp_path / "both.parquet", tmp_path / "report")
    assert (tmp_path / "report" / "gain_vs_ratio.png").is_file()
    table[table["arm"] == "real_only"].to_parquet(tmp_path / "alone.parquet")
    write_report(tmp_path / "alone.parquet", tmp_path / "report")
    assert not (tmp_path / "report" / "gain_vs_ratio.png").exists()
    assert (tmp_path / "report" / "classify_arms.png").is_file()


def test_a_gain_over_the_oracle_pairs_the_oracle_of_the_same_ratio():
    """The oracle at x1 against augmented x1 and x30: the x30 row was reported as a gain over
    the oracle (it was x30 - oracle x1), and two oracle ratios crashed with a broadcast error."""
    rows = classify_rows({"real_only": [80.0] * 3, "augmented": [82.0, 83.0, 84.0]})
    more = classify_rows({"augmented": [90.0] * 3, "oracle": [81.0] * 3})
    more.loc[more["arm"] == "augmented", "ratio"] = 30.0
    table = pd.concat([rows, more])
    gains = ag.paired_gain(table, "top1", baseline="oracle")
    assert list(gains["ratio"]) == [1.0] and gains["gain"].iloc[0] == pytest.approx(2.0)
    two = pd.concat([table, more[more["arm"] == "oracle"].assign(ratio=30.0, value=85.0)])
    gains = ag.paired_gain(two, "top1", baseline="oracle").set_index("ratio")["gain"]
    assert gains.to_dict() == pytest.approx({1.0: 2.0, 30.0: 5.0})
    assert list(ag.paired_gain(table, "top1")["ratio"]) == [1.0, 30.0]  # over real-only
    # an arm the filter left short trained on less than asked: its gain says so (the gain plot
    # drew it at the asked ratio while the arms plot and the text said "trained x0.4")
    short = table.assign(ratio_trained=np.where(table["ratio"] == 30.0, 28.0, table["ratio"]))
    gains = ag.paired_gain(short, "top1").set_index("ratio")["ratio_trained"]
    assert gains.to_dict() == {1.0: 1.0, 30.0: 28.0}


def test_the_result_helpers_say_what_they_were_given_instead_of_a_table(tmp_path):
    """`ag.summarize("bench/results.parquet")` (a path, as `report` takes) ended in an
    AttributeError; confidence=95 gave NaN intervals; a mistyped metric an empty frame."""
    table = classify_rows({"real_only": [80.0, 81.0], "augmented": [82.0, 84.0]})
    with pytest.raises(AugmentError, match=r"summarize takes a results table .* not a str"):
        ag.summarize("bench/results.parquet")
    with pytest.raises(AugmentError, match=r"confidence is a fraction between 0 and 1"):
        ag.paired_gain(table, confidence=95)
    with pytest.raises(AugmentError, match=r"no 'top-1' rows in this table; it has top1"):
        ag.paired_gain(table, "top-1")
    with pytest.raises(AugmentError, match=r"the table lacks seed"):
        ag.summarize(table.drop(columns="seed"))
    assert list(ag.summarize(table[table["arm"] == "none"]).columns)[-2:] == [
        "n_seeds",
        "ratio_trained",
    ]


def test_a_share_of_an_oracle_gain_that_may_be_zero_is_not_given():
    from augment.reporting import oracle_figures

    # one seed: the oracle's +0.4 could be 0, and +5 of it would read "1250 %"
    one_seed = classify_rows({"real_only": [80.0], "augmented": [85.0], "oracle": [80.4]})
    figures = oracle_figures(one_seed, 10)
    assert figures["oracle_gain"]["mean"] == pytest.approx(0.4) and "recovered" not in figures
    # three seeds, an oracle gain whose interval is above 0: the share is given
    measured = classify_rows(
        {
            "real_only": [80.0, 81.0, 79.0],
            "augmented": [82.0, 83.0, 81.5],
            "oracle": [84.0, 85.0, 83.0],
        }
    )
    share = oracle_figures(measured, 10)["recovered"]["share"]
    assert share == pytest.approx(2.1667 / 4.0, abs=1e-3)
    # the comparison itself, paired by seed: augmented - oracle = -2, -2, -1.5
    versus = oracle_figures(measured, 10)["synthetic_vs_oracle"]
    assert versus["mean"] == pytest.approx(-11 / 6) and versus["ci_high"] < 0
    assert versus["n_pairs"] == 3 and versus["ratio"] == 1.0
    unsure = measured.copy()
    unsure.loc[unsure["arm"] == "oracle", "value"] = [84.0, 79.0, 79.5]  # gains +4, -2, +0.5
    assert "recovered" not in oracle_figures(unsure, 10)


def test_a_synthetic_set_holding_a_test_image_is_refused():
    real = load_real("digits", 16)
    assert not set(real.split["pool"]) & set(real.split["test"])
    leaked = ImageSet(real.test.images[:3].copy(), real.test.labels[:3], ["s0", "s1", "s2"])
    with pytest.raises(
        AugmentError, match=r"training data: test image \S+ is s0 there \(the same pixels"
    ):
        check_no_leak(real.test, real.pool, leaked)
    check_no_leak(real.test, real.pool)  # the real pool itself is clean


def test_synthetic_images_rendered_from_held_out_images_are_left_out(tmp_path, caplog):
    """An img2img run from the same image folder the benchmark splits: a third of its renders
    were of test images, near copies of them (0.99 correlated), trained on without a word."""
    import pyarrow.parquet as pq

    from augment.digits.data import load_digit_images

    images, labels = load_digit_images(16)
    folder = tmp_path / "real"
    for name, label in (("zero", 0), ("one", 1)):
        (folder / name).mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(labels == label)[:10]):
            Image.fromarray(images[row]).save(folder / name / f"{i:04d}.png")
    sources = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.glob("*/*"))
    a_two = images[np.flatnonzero(labels == 2)[0]]  # pixels of no real image here
    run = write_fake_run(tmp_path / "run", np.stack([a_two] * 20), np.array([0] * 10 + [1] * 10))
    shard = run / "shards" / "part-00000.parquet"
    table = pq.read_table(shard)
    table = table.set_column(  # one render of each real image
        table.schema.get_field_index("source_image_id"), "source_image_id", [sources]
    )
    pq.write_table(table, shard)
    (run / "job.yaml").write_text(
        TINY_JOB.replace("OUT_DIR", str(run)).replace(
            "  batch_size: 4\n", f"  batch_size: 4\n  mode: img2img\nsource:\n  path: {folder}\n"
        )
    )
    settings = ClassifySettings(
        real=str(folder),
        synthetic=str(run),
        out=str(tmp_path / "bench"),
        image_size=16,
        shots=[2],
        ratios=[1.0],
        seeds=1,
        steps=2,
        oracle=False,
        synthetic_only=False,
    )
    results = run_classify(settings)
    test = json.loads((tmp_path / "bench" / "split.json").read_text())["test"]
    assert len(test) == 6
    assert f"6 images of {run} were rendered from held-out real images" in caplog.text
    top1 = results.query("metric == 'top1' and arm == 'augmented'")
    assert top1["n_synthetic"].item() == 4  # 2 shots x 2 classes at x1, of the 14 kept

    (run / "job.yaml").write_text(TINY_JOB.replace("OUT_DIR", str(run)))  # txt2img: no source
    caplog.clear()
    run_classify(settings)
    assert "held-out" not in caplog.text


def test_a_coco_real_set_keeps_category_0_and_every_class_something_to_train_on(tmp_path, caplog):
    """Category id 0 read as "no category": its images were dropped without a word. A class of
    two images at test_fraction 0.8 went whole to test and scored 0 % in every seed."""
    from augment.bench.data import load_real, stratified_split

    (tmp_path / "images").mkdir()
    images, categories = [], [{"id": i, "name": n} for i, n in enumerate(["zero", "one", "two"])]
    for index in range(12):
        Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(tmp_path / "images" / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "category_id": index % 2})
    document = {"images": images, "annotations": [], "categories": categories}
    (tmp_path / "annotations.json").write_text(json.dumps(document))
    real = load_real(str(tmp_path / "annotations.json"), 8)
    assert real.classes.names == ["zero", "one"]  # "two" has no image: not a class
    assert "1 categories have no image and are left out of the classes: two" in caplog.text
    assert np.bincount(real.pool.labels).tolist() == [4, 4]
    assert np.bincount(real.test.labels).tolist() == [2, 2]
    pool, test = stratified_split(np.array([0, 0, 1, 1, 1, 1]), 0.8, seed=0)
    assert np.bincount(np.array([0, 0, 1, 1, 1, 1])[pool]).tolist() == [1, 1]


@pytest.fixture(scope="module")
def digits_generator_run(tmp_path_factory) -> Path:
    """'Synthetic' = 20 real digits per class from the generator split (never pool or test)."""
    from augment.digits.data import digit_splits, load_digit_images

    images, labels = load_digit_images(32)
    rows = np.concatenate(
        [np.flatnonzero(labels[digit_splits()["generator"]] == c)[:20] for c in range(10)]
    )
    chosen = digit_splits()["generator"][rows]
    return write_fake_run(tmp_path_factory.mktemp("fake"), images[chosen], labels[chosen])


def test_classify_writes_seeds_per_arm_and_the_report(digits_generator_run, tmp_path, caplog):
    from augment.reporting import write_report

    settings = ClassifySettings(
        synthetic=str(digits_generator_run),
        out=str(tmp_path / "bench"),
        image_size=16,
        shots=[5],
        ratios=[2.0, 6.0],  # 20 synthetic images per class: x6 of 5 shots asks 30
        seeds=3,
        steps=15,  # what is checked here is which arms train on what, not how well
    )
    results = run_classify(settings)
    predictions = pd.read_parquet(tmp_path / "bench" / "predictions.parquet")
    tasks = results.query("metric == 'top1'")
    assert len(predictions) == len(tasks) * 300  # every test digit, for each model
    assert (predictions["label_name"] == [DIGITS[i] for i in predictions["label"]]).all()
    assert (predictions["prediction_name"] == [DIGITS[i] for i in predictions["prediction"]]).all()
    short = results[(results["arm"] == "augmented") & (results["ratio"] == 6.0)]
    assert (short["n_synthetic"] == 200).all() and (short["ratio_trained"] == 4.0).all()
    assert short["synthetic_short"].all()
    assert "augmented ×6 at 5 shots asks 300 synthetic images; the synthetic set has 200" in (
        caplog.text
    )
    top1 = results[(results["metric"] == "top1")]
    assert set(top1["arm"]) == {"real_only", "augmented", "oracle", "synthetic_only"}
    assert (top1.groupby(["arm", "ratio"])["seed"].nunique() == 3).all()
    # The oracle: 5 real a class plus 10 more real (x2) from the pool's 30; x6 would need 30
    # more, which the pool does not hold, so it does not run.
    oracle = top1[top1["arm"] == "oracle"]
    assert set(oracle["ratio"]) == {2.0} and (oracle["n_real"] == 150).all()
    assert (oracle["n_synthetic"] == 0).all()
    classify = results[results["task"] == "classify"]
    assert set(classify["metric"]) == {"top1", "macro_f1", "class_accuracy", "node_accuracy"}
    quality = results[results["task"] == "quality"]  # the fake run has no scorer: flags only
    rates = {f"{flag}_rate" for flag in FLAGS}
    assert set(quality["metric"]) == {"flagged", *rates}
    assert len(quality) == 10 * (1 + len(rates)) and (quality["value"] == 0).all()
    nodes = set(results[results["metric"] == "node_accuracy"]["label"])
    assert nodes == {"digit.n.01"}  # every digit shares one path: its deepest node stands for it

    augmented = top1[(top1["arm"] == "augmented") & (top1["ratio"] == 2.0)]
    assert (augmented["n_synthetic"] == 100).all() and (augmented["n_real"] == 50).all()
    split = json.loads((tmp_path / "bench" / "split.json").read_text())
    assert len(split["test"]) == 300 and len(split["validation"]) == 200
    held_out = set(split["test"]) | set(split["validation"])
    assert not held_out & set(split["pool"]) and not set(split["test"]) & set(split["validation"])

    report = write_report(tmp_path / "bench" / "results.parquet", tmp_path / "report")
    text = report.read_text()
    assert "real_only" in text and "Paired gain" in text and "[" in text
    assert "top-1 on the held-out real test split" in text
    assert "**Real images instead** (oracle ×2" in text
    assert (
        "Synthetic images against as many real ones (augmented ×2 − oracle ×2, same seeds)" in text
    )
    assert "augmented ×6 (trained ×4)" in text and "too small for augmented ×6" in text
    for name in ("classify_arms", "gain_vs_ratio", "per_class_gain", "wordnet_nodes", "samples"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
    headline = json.loads((tmp_path / "report" / "headline.json").read_text())
    assert headline["real_only"]["n_seeds"] == 3 and "gain" in headline


def test_the_oracle_adds_real_images_as_the_augmented_arm_added_synthetic_ones(
    digits_generator_run, tmp_path
):
    """A synthetic set without nines: the augmented arm added 45 images and no nine, and the
    oracle, "as many more real images", added 50 with nines among them. A rerun without a
    synthetic set left the last one's per-concept quality rows in the table and the report."""
    records = pd.read_parquet(digits_generator_run / "shards")
    keep = records["concept_name"] != "nine"
    images = np.stack(
        [np.array(Image.open(io.BytesIO(r["bytes"]))) for r in records["image"][keep]]
    )
    labels = np.array([DIGITS.index(name) for name in records["concept_name"][keep]])
    no_nines = write_fake_run(tmp_path / "no-nines", images, labels)
    settings = ClassifySettings(
        synthetic=str(no_nines),
        out=str(tmp_path / "bench"),
        image_size=16,
        shots=[5],
        ratios=[1.0],
        seeds=1,
        steps=5,
        synthetic_only=False,
    )
    top1 = run_classify(settings).query("metric == 'top1'").set_index("arm")
    assert top1.loc["augmented", "n_synthetic"] == 45
    assert top1.loc["oracle", "n_real"] == 50 + 45
    for arm in ("augmented", "oracle"):
        assert top1.loc[arm, "ratio_trained"] == 0.9 and top1.loc[arm, "synthetic_short"]

    settings.synthetic = None
    results = run_classify(settings)
    table = pd.read_parquet(tmp_path / "bench" / "results.parquet")
    assert len(table) == len(results) and "quality" not in set(table["task"])


def test_synthetic_concepts_no_real_class_is_named_like_are_said(digits_generator_run, caplog):
    """A misspelt concept ("sevn") lost its images from every arm without a word."""
    from augment.bench.data import Classes, load_synthetic

    classes = Classes(DIGITS[:9], [None] * 9)  # a real set without nines
    synthetic = load_synthetic(digits_generator_run, classes, 8)
    assert len(synthetic) == 180
    assert f"20 images of {digits_generator_run} are of concepts no real class" in caplog.text
    assert "not used: nine (concept names" in caplog.text


def test_the_oracle_adds_real_pool_images_the_arm_has_not_got_and_never_a_test_image():
    from augment.bench.classify import few_shot, more_real, oracle_fits

    real = load_real("digits", 8)
    taken = few_shot(real.pool, 10, seed=0)
    extra = more_real(real.pool, taken, 100, 10, seed=0, synthetic=real.pool)
    assert not set(extra.ids) & set(taken.ids) and not set(extra.ids) & set(real.test.ids)
    assert np.bincount(extra.labels, minlength=10).tolist() == [10] * 10
    # 30 pool digits a class: 10 shots leave 20 more, so x2 fits and x2.1 does not.
    assert oracle_fits(real.pool, 10, 2.0, 10) and not oracle_fits(real.pool, 10, 2.1, 10)


def test_empty_predictions_score_zero_instead_of_crashing():
    from augment.bench.detect import coco_eval

    truth = {
        "images": [{"id": 1, "width": 96, "height": 96, "file_name": "1.png"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 2,
                "bbox": [1, 1, 9, 9],
                "area": 81,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 2, "name": "one"}],
    }
    assert coco_eval(truth, []) == {"map50": 0.0, "map50_95": 0.0, "per_class": {"one": 0.0}}
    perfect = [{"image_id": 1, "category_id": 2, "bbox": [1, 1, 9, 9], "score": 0.9}]
    assert coco_eval(truth, perfect)["map50_95"] == pytest.approx(100.0)


def test_canvases_keep_boxes_on_the_ink(tmp_path):
    from augment.digits.canvases import real_canvases

    real_canvases(tmp_path, train_count=20, val_count=10, test_count=0)
    document = json.loads((tmp_path / "val" / "annotations.json").read_text())
    assert len(document["images"]) == 10 and document["annotations"]
    for annotation in document["annotations"]:
        image = np.asarray(
            Image.open(tmp_path / "val" / "images" / f"{annotation['image_id']}.png")
        )
        x, y, w, h = (int(v) for v in annotation["bbox"])
        assert image[y : y + h, x : x + w].max() > 48  # ink inside the box
        assert 1 <= annotation["category_id"] <= 10


def test_few_shot_canvases_use_that_many_real_digits_a_class(tmp_path):
    from augment.digits.canvases import real_canvases

    real_canvases(tmp_path, train_count=40, val_count=5, per_class=2, test_count=0)
    document = json.loads((tmp_path / "train" / "annotations.json").read_text())
    sources: dict[int, set] = {}
    for annotation in document["annotations"]:
        sources.setdefault(annotation["category_id"], set()).add(annotation["source"])
    assert sources and all(len(chosen) <= 2 for chosen in sources.values())
    assert sum(len(chosen) for chosen in sources.values()) > 10  # more than one a class
    with pytest.raises(AugmentError, match="at most that many per class, not 31"):
        real_canvases(tmp_path / "more", train_count=4, val_count=2, per_class=31, test_count=0)


def test_detector_canvases_test_split_holds_digits_no_other_split_does(tmp_path):
    """The demo's detector settings were tuned on its val canvases; its test canvases, scored
    once, are made of the digits the classifier validates on, which no detector choice saw."""
    from augment.digits.canvases import real_canvases
    from augment.digits.data import digit_splits

    real_canvases(tmp_path, train_count=20, val_count=10, test_count=10)

    def sources(split: str) -> set[int]:
        document = json.loads((tmp_path / split / "annotations.json").read_text())
        return {int(a["source"].removeprefix("digits-")) for a in document["annotations"]}

    splits = digit_splits()
    test = sources("test")
    assert test and test <= set(splits["validation"].tolist())
    assert sources("val") <= set(splits["test"].tolist())
    assert not test & (sources("train") | sources("val"))
    real_canvases(tmp_path, train_count=20, val_count=10, test_count=0)  # a smaller world
    assert not (tmp_path / "test").exists()  # an old test split is not scored instead


def test_detect_scores_the_test_split_and_tunes_on_val(tmp_path):
    """A folder of train/, val/ and test/ is scored on test/ (val/ stays for tuning: a figure on
    the split the settings were tuned on is an upper estimate); validation asks for val/."""
    from augment.bench.detect import DetectSettings, real_splits, scored_split, split_folder

    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        (tmp_path / split / "images").mkdir(parents=True)
        images = [
            {"id": n, "file_name": f"{n}.png", "width": 32, "height": 32} for n in range(count)
        ]
        boxes = [
            {"id": n + 1, "image_id": n, "category_id": 1, "bbox": [1, 1, 4, 4]}
            for n in range(count)
        ]
        for n in range(count):
            Image.new("RGB", (32, 32)).save(tmp_path / split / "images" / f"{n}.png")
        document = {"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "a"}]}
        (tmp_path / split / "annotations.json").write_text(json.dumps(document))

    def held_out(evaluate_on: str) -> tuple[str, int]:
        settings = DetectSettings(real=str(tmp_path), evaluate_on=evaluate_on)
        _, _, scored, scored_dir = real_splits(settings)
        assert scored_dir.parent.name == split_folder(scored_split(settings)[0])
        return scored_split(settings)[0], len(scored["images"])

    assert held_out("auto") == held_out("test") == ("test", 1)
    assert held_out("validation") == ("validation", 2)
    shutil.rmtree(tmp_path / "test")
    assert held_out("auto") == ("validation", 2)
    with pytest.raises(AugmentError, match=r"evaluate_on test: .* has no test/annotations.json"):
        real_splits(DetectSettings(real=str(tmp_path), evaluate_on="test"))
    with pytest.raises(AugmentError, match=r"evaluate_on: auto, test, validation, got 'val'"):
        DetectSettings(real=str(tmp_path), evaluate_on="val")
    shutil.rmtree(tmp_path / "val")  # a folder of splits short of one: not "not found"
    with pytest.raises(AugmentError, match=r"holds train/ and no val/ or test/ with its annot"):
        real_splits(DetectSettings(real=str(tmp_path)))


def test_detect_refuses_real_splits_that_would_score_wrongly(tmp_path, monkeypatch):
    """Each of these trained (or trained for minutes, then crashed): a test split numbering the
    same classes otherwise (20 classes to ultralytics, real-only always at 0), a test image also
    in train, an object of the scored split without a mask under task segment (IndexError
    after training), an image without its size (KeyError)."""
    from augment.bench.detect import DetectSettings, run_detect
    from augment.digits.canvases import real_canvases

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    clean = real_canvases(tmp_path / "clean", train_count=4, val_count=2, test_count=2)

    def refused(change, match: str, **settings) -> None:
        real = tmp_path / f"real-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(clean, real)
        path = real / "test" / "annotations.json"
        document = json.loads(path.read_text())
        change(real, document)
        path.write_text(json.dumps(document))
        with pytest.raises(AugmentError, match=match):
            run_detect(DetectSettings(real=str(real), out=str(tmp_path / "bench"), **settings))
        assert not (tmp_path / "bench" / "detect" / "runs").exists()  # nothing trained

    def renumber(_, document):
        for entry in [*document["categories"], *document["annotations"]]:
            key = "id" if "name" in entry else "category_id"
            entry[key] += 10

    def copy_into_train(real, document):
        first = document["images"][0]["file_name"]
        shutil.copyfile(real / "test" / "images" / first, real / "train" / "images" / "1.png")

    def drop_a_mask(_, document):
        document["annotations"][0]["segmentation"] = []

    def drop_sizes(_, document):
        for image in document["images"]:
            del image["width"], image["height"]

    refused(renumber, r"category 'eight' is id 9 in train and 19 in test; give both splits")
    refused(copy_into_train, r"a test image is also in the real train split: test image 1 is")
    refused(drop_a_mask, r"lack one in 1 of \d+ objects .*annotation 1\)", task="segment")
    refused(drop_sizes, r"images\[0\] \(id 1\) has no width and height")

    def drop_objects(_, document):
        document["annotations"] = []

    refused(drop_objects, r"its test split has no annotated object .* give it annotated images")


def test_detector_settings_refuse_what_ultralytics_cannot_train(tmp_path):
    from augment.bench.detect import DetectSettings, run_detect

    image = {"id": 1, "file_name": "1.png", "width": 32, "height": 32}
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 8, 8], "segmentation": []}
    document = {"images": [image], "annotations": [box], "categories": [{"id": 1, "name": "a"}]}
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "annotations.json").write_text(json.dumps(document))
        Image.new("RGB", (32, 32)).save(tmp_path / split / "images" / "1.png")
    settings = DetectSettings(real=str(tmp_path), out=str(tmp_path / "bench"), task="segment")
    with pytest.raises(AugmentError, match="hold none"):
        run_detect(settings)
    own = tmp_path / "bench" / "detect" / "best.pt"  # the user's, where the benchmark works
    own.parent.mkdir(parents=True)
    own.write_bytes(b"my weights")
    settings = DetectSettings(real=str(tmp_path), out=str(tmp_path / "bench"))
    with pytest.raises(AugmentError, match=r"detect holds best.pt, which a detection benchmark"):
        run_detect(settings)
    assert own.read_bytes() == b"my weights"

    with pytest.raises(AugmentError, match="optimizer 'sgd' is not one of auto, SGD"):
        DetectSettings(real="x", optimizer="sgd")
    with pytest.raises(AugmentError, match="fliplr must be from 0 to 1, got 1.5"):
        DetectSettings(real="x", fliplr=1.5)
    with pytest.raises(AugmentError, match="nbs must be"):
        DetectSettings(real="x", nbs=0)


def test_detect_matches_synthetic_boxes_to_real_classes_by_name(tmp_path):
    """A real set numbered in another order (alphabetically, or from 0) trained every pasted
    digit as another one, or ended in a KeyError; a class the real set lacks is refused."""
    from augment.bench.detect import (
        DetectSettings,
        real_categories,
        run_detect,
        synthetic_category_ids,
    )
    from augment.sinks.parquet import write_shard

    run = tmp_path / "run"
    boxes = [{"category_id": c, "bbox": [1.0, 1.0, 4.0, 4.0]} for c in (3, 6)]  # two, five
    write_shard(run / "shards", "part-00000.parquet", [{"item_id": "a", "boxes": boxes}])
    own = [{"id": i + 1, "name": name} for i, name in enumerate(DIGITS)]
    (run / "manifest.json").write_text(json.dumps({"categories": own}))
    alphabetical = [{"id": i, "name": name} for i, name in enumerate(sorted(DIGITS))]
    ids = synthetic_category_ids(run, alphabetical)
    assert ids == {3: sorted(DIGITS).index("two"), 6: sorted(DIGITS).index("five")}
    with pytest.raises(AugmentError, match="its boxes of five name no category of the real"):
        synthetic_category_ids(run, [c for c in own if c["name"] != "five"])

    image = {"id": "000001", "file_name": "1.png", "width": 32, "height": 32}
    val = {"images": [image], "annotations": [], "categories": own[:2]}
    train = {**val, "categories": own[1:3]}
    with pytest.raises(AugmentError, match="its val split has no annotated object"):
        real_categories(train, val, "real")
    val["annotations"] = [{"image_id": "000001", "category_id": 1, "bbox": [1, 1, 4, 4]}]
    assert [c["name"] for c in real_categories(train, val, "real")] == ["zero", "one", "two"]
    with pytest.raises(AugmentError, match="its train split has no image"):
        real_categories({**train, "images": []}, val, "real")

    document = {**val, "annotations": [{**val["annotations"][0], "bbox": [30, 30, 9, 9]}]}
    (tmp_path / "one.json").write_text(json.dumps(document))
    settings = DetectSettings(real=str(tmp_path / "one.json"), out=str(tmp_path / "bench"))
    with pytest.raises(AugmentError, match=r"bbox \[30, 30, 9, 9\], outside its 32x32 image"):
        run_detect(settings)


def test_the_detector_refuses_val_images_and_leaves_out_their_renders(tmp_path, monkeypatch):
    """The detector benchmark never looked at its synthetic images: a set holding its val
    canvases, or img2img renders of them, was trained on and scored on those canvases."""
    from augment.bench.data import renders_of_held_out
    from augment.bench.detect import DetectSettings, run_detect, synthetic_coco, val_location
    from augment.digits.canvases import real_canvases
    from augment.sinks.parquet import write_shard

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    real = real_canvases(tmp_path / "real", train_count=2, val_count=2, test_count=0)
    val = json.loads((real / "val" / "annotations.json").read_text())
    copied = (real / "val" / "images" / val["images"][0]["file_name"]).read_bytes()
    box = {"category_id": 1, "bbox": [1.0, 1.0, 4.0, 4.0]}
    run = tmp_path / "run"
    train_image = next((real / "train" / "images").glob("*.png")).read_bytes()
    records = [
        {"item_id": f"i{n}", "boxes": [box], "image": {"bytes": data, "path": None}}
        for n, data in enumerate([copied, train_image])
    ]
    write_shard(run / "shards", "part-00000.parquet", records)
    own = [{"id": i + 1, "name": name} for i, name in enumerate(DIGITS)]
    (run / "manifest.json").write_text(json.dumps({"categories": own}))
    settings = DetectSettings(real=str(real), synthetic=str(run), out=str(tmp_path / "bench"))
    with pytest.raises(
        AugmentError, match=f"val image {val['images'][0]['id']} is item i0 of {run} \\(the same"
    ):
        run_detect(settings)

    records[0]["source_image_id"] = str(val["images"][1]["id"])  # img2img of a val canvas
    records[0]["image"]["bytes"] = records[1]["image"]["bytes"]
    write_shard(run / "shards", "part-00000.parquet", records)
    (run / "job.yaml").write_text(
        TINY_JOB.replace("OUT_DIR", str(run)).replace(
            "  batch_size: 4\n",
            f"  batch_size: 4\n  mode: img2img\nsource:\n  path: {real / 'val'}\n",
        )
    )
    val_ids = [str(image["id"]) for image in val["images"]]
    renders = renders_of_held_out(run, val_location(settings), val_ids)
    assert renders == {"i0"}
    coco, _ = synthetic_coco(run, tmp_path / "synthetic", {1: 0}, leave_out=renders)
    assert len(coco["images"]) == 1


def test_detect_reads_a_real_set_in_cocos_own_layout(tmp_path):
    """`--real coco/annotations/instances_val2017.json` looked for coco/annotations/images/,
    and only the first missing image's path was said."""
    from augment.bench.detect import DetectSettings, real_splits

    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    images = []
    for n in range(4):
        Image.new("RGB", (32, 32)).save(tmp_path / "coco" / "val2017" / f"{n}.png")
        images.append({"id": n, "file_name": f"{n}.png", "width": 32, "height": 32})
    annotations = [
        {"id": n + 1, "image_id": n, "category_id": 1, "bbox": [1, 1, 4, 4]} for n in range(4)
    ]
    document = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "one"}],
    }
    (tmp_path / "coco" / "annotations").mkdir()
    official = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    official.write_text(json.dumps(document))
    settings = DetectSettings(real=str(official), out=str(tmp_path / "bench"))
    train, train_dir, val, val_dir = real_splits(settings)
    assert train_dir == val_dir == tmp_path / "coco" / "val2017"
    assert len(train["images"]) + len(val["images"]) == 4
    shutil.rmtree(tmp_path / "coco" / "val2017")
    with pytest.raises(
        AugmentError, match=r"\(its first, 0.png, is not in .*/coco/val2017/\); put"
    ):
        real_splits(settings)


def test_a_relative_out_keeps_the_detectors_weights_in_it(tmp_path, monkeypatch):
    """ultralytics puts a relative project under ./runs/detect/: each model's weights, 24 MB a
    run, went to the current folder instead of --out."""
    from augment.bench.detect import DetectSettings, run_detect
    from augment.digits.canvases import real_canvases

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    real_canvases(tmp_path / "real", train_count=8, val_count=4, test_count=4)
    monkeypatch.chdir(tmp_path)
    settings = DetectSettings(real="real", out="bench", batch=4, imgsz=32, seeds=1, epochs=1)
    results = run_detect(settings)
    assert set(results["evaluated_on"]) == {"test"} and set(results["n_test"]) == {4}
    assert not (tmp_path / "runs").exists()
    assert list((tmp_path / "bench").rglob("last.pt"))


def test_a_batch_ultralytics_refuses_is_bad_input_not_a_fault(tmp_path, monkeypatch):
    from augment.bench.detect import DetectSettings, run_detect
    from augment.digits.canvases import real_canvases

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    real_canvases(tmp_path / "real", train_count=12, val_count=4, test_count=0)
    settings = DetectSettings(
        real=str(tmp_path / "real"), out=str(tmp_path / "bench"), batch=11, imgsz=32, seeds=1
    )
    with pytest.raises(AugmentError, match=r"ultralytics: final batch=1 .*\(here: --batch"):
        run_detect(settings)


@pytest.mark.slow
def test_detect_runs_every_seed_and_cocoeval_matches_ultralytics(tmp_path):
    """On the demo's own detection data: real canvases, and rendered digits pasted by the demo
    job's segment: and paste: sections (OUT/paste); a -seg model, so boxes and masks."""
    from augment.bench.detect import DetectSettings, run_detect
    from augment.config import load_spec
    from augment.digits.canvases import real_canvases
    from augment.digits.demo import DEMO_JOB
    from augment.job import RunOptions, run_job

    real_canvases(tmp_path / "real", train_count=60, val_count=30, test_count=0)
    overrides = {
        "output.dir": str(tmp_path / "renders"),
        "prompts.images_per_concept": 6,
        "generation.num_inference_steps": 8,
        "paste.images_per_background": 60,
        "filters.scorer": None,
    }
    run_job(load_spec(DEMO_JOB, overrides), RunOptions(distributor="local"))
    settings = DetectSettings(
        real=str(tmp_path / "real"),
        synthetic=str(tmp_path / "renders" / "paste"),
        out=str(tmp_path / "bench"),
        task="segment",
        epochs=3,
        seeds=2,
        batch=16,
    )
    results = run_detect(settings)
    overall = results[results["label"] == ""]
    assert (overall.groupby("arm")["seed"].nunique() == 2).all()
    assert set(overall["arm"]) == {"real_only", "augmented"}
    assert set(results["model"]) == {"yolov8n-seg.yaml"}
    wide = overall.pivot_table(index=["arm", "seed"], columns="metric", values="value")
    assert ((wide["map50"] - wide["ultralytics_map50"]).abs() <= 2.0).all()  # points, i.e. 0.02
    assert wide["mask_map50_95"].notna().all()
    assert ((wide["mask_map50_95"] - wide["ultralytics_mask_map50_95"]).abs() <= 5.0).all()
    assert set(results[results["metric"] == "class_ap"]["label"]) == {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }


def test_resnet_loads_local_weights_and_bad_weights_are_a_clear_error(tmp_path):
    import torch
    import torchvision

    from augment.classifier import build_model

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")
    model = build_model("resnet18", 10, str(tmp_path / "resnet18.pt"))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 10
    (tmp_path / "broken.pt").write_text("not weights")
    with pytest.raises(AugmentError, match="cannot load a state_dict"):
        build_model("resnet18", 10, str(tmp_path / "broken.pt"))


def test_bench_perf_compares_the_loops_the_engine_and_the_floor(tmp_path, capsys):
    """The tiny model on the CPU: every row measured, ratios and utilisation derived, the fast
    paths' pixels compared with the default engine's."""
    code, printed, _ = cli(
        capsys,
        "bench",
        "perf",
        "--smoke",
        "--out",
        tmp_path,
        "--fast",
        "channels_last,fuse_qkv",
        "--peak-tflops",
        "1",
        "--no-ray",
    )
    assert code == 0
    report = json.loads((tmp_path / "perf.json").read_text())
    (case,) = report["cases"]
    rows = case["rows"]
    assert case["model"] == "tiny" and report["peak_tflops"] == 1
    assert rows["flops"]["flops_per_image"] > 1e6
    timed = [
        "seed loop",
        "diffusers batched",
        "augment",
        "augment channels_last",
        "augment fuse_qkv",
        "unet alone",
        "floor",
    ]
    for name in timed:
        assert rows[name]["images_per_s"] > 0, (name, rows[name])
        assert 0 < rows[name]["mfu"] < 1
        assert rows[name]["vs_diffusers_batched"] > 0
    assert rows["floor"]["images_per_s"] < rows["unet alone"]["images_per_s"]
    assert rows["floor"]["vs_floor"] == 1
    assert rows["augment"]["images"] == case["images"] == 16
    for name in ("augment channels_last", "augment fuse_qkv"):
        assert rows[name]["max_pixel_difference"] <= 2, (name, rows[name])
    assert not any(name.startswith("augment ray") for name in rows)  # --no-ray
    assert "fuse_qkv" in printed and "batched" in printed
    assert not list(tmp_path.glob("augment-perf-*")), "the work folder is removed"


def test_bench_perf_without_baselines_times_the_engine_with_a_swapped_vae(tmp_path, capsys):
    """--no-baselines: FLOPs and the engine's rows only; the float16-VAE path loads the
    model's own VAE saved anew (a float32 CPU run decodes the same pixels)."""
    code, _, err = cli(
        capsys, "bench", "perf", "--smoke", "--out", tmp_path, "--no-baselines",
        "--fast", " float16 vae, float16 vae", "--peak-tflops", "1", "--no-ray",
    )  # fmt: skip
    assert code == 0, err
    (case,) = json.loads((tmp_path / "perf.json").read_text())["cases"]
    rows = case["rows"]
    assert list(rows) == ["flops", "augment", "augment float16 vae"]
    assert rows["augment float16 vae"]["images_per_s"] > 0, rows
    assert rows["augment float16 vae"]["max_pixel_difference"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--fast", "cuda graphs"], "'cuda graphs' is now called 'compiled cuda graphs'"),
        (["--fast", "fuse-qkv"], "did you mean 'fuse_qkv'"),
        (["--fast", " , "], "--fast is empty"),
        (["--models", "sd15,sdx"], "unknown 'sdx' (did you mean 'sdxl'?)"),
        (["--images", "0"], "images must be at least 1"),
        (["--model", "no/such/model/dir"], "--model: 'no/such/model/dir' not found"),
        (["--model", "builtin:tiny-sd", "--models", "sd15,sdxl"], "--model measures one model"),
        (["--smoke", "--models", "digits"], "--smoke measures the tiny model"),
    ],
)
def test_bench_perf_refuses_a_wrong_setting_before_measuring_anything(
    tmp_path, capsys, options, message
):
    """A misspelt fast path used to be refused after the baselines had run (GPU minutes)."""
    code, _, err = cli(capsys, "bench", "perf", "--out", tmp_path, *options)
    assert code == 2
    assert message in error_line(err)
    assert not (tmp_path / "perf.json").exists()


def test_bench_perf_never_writes_into_a_folder_of_the_users(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "bench", "perf", "--out", tmp_path, "--smoke")
    assert code == 2 and "notes.txt" in error_line(err)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("vae", "model_index.json lists vae, but"),
        ("model_index.json", "model_index.json cannot be read"),
        ("unet/diffusion_pytorch_model.safetensors", "--model: cannot load"),
    ],
    ids=["component-missing", "index-junk", "weights-junk"],
)
def test_bench_perf_names_a_damaged_model_folder(tmp_path, capsys, damage, message):
    """Each was "a fault of augment" (exit 1) from deep in diffusers."""
    from augment import registry

    model = tmp_path / "model"
    shutil.copytree(registry.resolve("model", "builtin:digits", "test"), model)
    target = model / damage
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.write_text("{not json")
    options = ["--model", model, "--images", "1", "--no-ray", "--no-baselines"]
    code, _, err = cli(capsys, "bench", "perf", "--out", tmp_path / "perf", *options)
    assert code == 2 and message in error_line(err)


def test_a_real_imagefolder_with_an_empty_class_is_refused(tmp_path):
    """An empty class would leave a test set of the other classes alone, scored 100 %."""
    for name in ("eight", "nine"):
        (tmp_path / name).mkdir()
    for n in range(3):
        Image.new("L", (8, 8)).save(tmp_path / "nine" / f"{n}.png")
    with pytest.raises(AugmentError, match="class folder eight holds no image"):
        load_real(str(tmp_path), 8)


def test_a_real_imagefolder_is_read_as_a_run_reads_it(tmp_path, caplog):
    """Hidden entries are no classes or images (`.thumbs/` was class 0, `._a.png` unreadable),
    and `Three/` beside `three/` is one class twice, which a run merges: here it was two
    classes the model could not tell apart. Errors name the class, not its number."""
    for name in ("nine", "three", ".thumbs"):
        (tmp_path / name).mkdir()
        for n in range(3):
            Image.new("L", (8, 8), n * 40).save(tmp_path / name / f"{n}.png")
    (tmp_path / "nine" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "nine" / "more").mkdir()  # left out, as before, but now said
    Image.new("L", (8, 8)).save(tmp_path / "nine" / "more" / "x.png")
    Image.new("L", (8, 8)).save(tmp_path / "loose.png")
    real = load_real(str(tmp_path), 8, test_fraction=0.34)
    assert real.classes.names == ["nine", "three"] and len(real.pool) + len(real.test) == 6
    assert "1 folder(s) inside class folders are not read, first " in caplog.text
    assert "1 image(s) right in " in caplog.text and "first loose.png" in caplog.text
    with pytest.raises(AugmentError, match="lower --shots below 3") as error:
        few_shot(real.pool, 3, 0, real.classes.names)
    assert "real images of class nine in the pool" in str(error.value)

    (tmp_path / "Three").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "Three" / "a.png")
    with pytest.raises(AugmentError, match="class folders 'Three' and 'three' name one class"):
        load_real(str(tmp_path), 8)


def test_a_cards_peak_is_the_longest_name_it_matches():
    """An L40 is not an L4 (MFU would read 1.5 times too high), nor an H200 NVL an H200 SXM."""
    from augment.bench.perf import peak_tflops

    peaks = {name: peak_tflops(f"NVIDIA {name}", None) for name in ("L4", "L40", "L40S", "H200")}
    assert peaks == {"L4": 121.0, "L40": 181.0, "L40S": 362.0, "H200": 989.4}
    assert peak_tflops("NVIDIA H200 NVL", None) == 835.0
    assert peak_tflops("NVIDIA H200", 500.0) == 500.0  # --peak-tflops wins


def where_a_benchmark_worker_runs(name: str) -> tuple:
    import os

    import torch

    return os.environ.get(name), os.getcwd(), torch.get_num_threads()


LEFT_BEHIND: list[int] = []


def what_earlier_tasks_left(task: int) -> list[int]:
    """What earlier tasks left in this process's module state, then leaves its own mark."""
    before = list(LEFT_BEHIND)
    LEFT_BEHIND.append(task)
    return before


@pytest.mark.parametrize("workers", [1, 2])
def test_fresh_benchmark_tasks_each_start_in_a_process_of_their_own(workers):
    """A detector's figure must not depend on what trained before it in the same process (a
    YOLO trained after another scored 70.4 mAP50:95 where the same seed alone scored 67.5),
    nor on the number of workers."""
    from augment.bench.workers import in_processes

    tasks = [(task,) for task in range(4)]
    assert in_processes(what_earlier_tasks_left, tasks, workers, fresh=True) == [[]] * 4
    assert LEFT_BEHIND == []  # and nothing ran in the caller's process


def test_a_script_without_a_main_guard_is_told_to_add_one_before_any_worker_starts(tmp_path):
    """Each benchmark worker imports the main script again: one without the guard called the
    benchmark again there and died in multiprocessing's bootstrapping RuntimeError, then a
    BrokenProcessPool. It is refused at once with the fix; with the guard it runs."""
    import subprocess
    import sys

    call = (
        "from augment.bench.workers import in_processes\n"
        "print(in_processes(abs, [(-1,), (-2,)], 2))\n"
    )
    bare, guarded = tmp_path / "bare.py", tmp_path / "guarded.py"
    bare.write_text(call)
    guarded.write_text(
        'if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in call.splitlines())
    )
    done = subprocess.run([sys.executable, str(bare)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "BrokenProcessPool" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"augment.errors.AugmentError: {bare} calls a benchmark that trains models in worker "
        "processes, and each worker imports this script again, which would call it again "
        'there: put the script\'s calls under `if __name__ == "__main__":`'
    )
    done = subprocess.run(
        [sys.executable, str(guarded)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout == "[1, 2]\n", done.stderr


def sleep_and_say_so(folder: str, seconds: float) -> None:
    """A benchmark task that takes long: it leaves its process id in `folder` first."""
    import time

    (Path(folder) / str(os.getpid())).write_text("started")
    time.sleep(seconds)


def test_an_interrupt_stops_the_benchmark_workers_at_once(tmp_path):
    """Jupyter's Interrupt reaches the kernel alone: the pool's exit then waited for every
    queued task (minutes of training), and the workers trained on."""
    import signal
    import threading
    import time

    from augment.bench.workers import in_processes

    def interrupt(*_):
        raise KeyboardInterrupt

    def interrupt_once_both_train():
        deadline = time.monotonic() + 180
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        signalled.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    signalled: list[float] = []
    previous = signal.signal(signal.SIGUSR1, interrupt)
    threading.Thread(target=interrupt_once_both_train, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            in_processes(sleep_and_say_so, [(str(tmp_path), 120.0)] * 4, 2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - signalled[0] < 30  # not the 120 s of each queued task
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def fail_at_once_or_sleep(index: int) -> None:
    """A benchmark task: the first fails (as ultralytics refusing a batch), the others train on."""
    import time

    if index == 0:
        raise ValueError("final batch=1")
    time.sleep(5)


def test_a_failed_fresh_task_stops_the_workers_without_a_stray_traceback(monkeypatch):
    """A detector that failed (ultralytics refusing a batch) printed, beside the real error, a
    thread's TypeError traceback: the pool was shut down while its own thread replaced the
    process that had ended its one task."""
    import threading
    import time

    from augment.bench.workers import in_processes

    stray: list = []
    monkeypatch.setattr(threading, "excepthook", stray.append)
    with pytest.raises(ValueError, match="final batch=1"):
        in_processes(fail_at_once_or_sleep, [(0,), (1,), (2,)], 2, fresh=True)
    time.sleep(1)  # the pool's thread, had it gone on, would have failed by now
    assert stray == []


def test_benchmark_workers_see_the_callers_environment_and_folder_as_they_are_now(
    tmp_path, monkeypatch
):
    from augment.bench.workers import in_processes

    task = ("AUGMENT_TEST_SETTING",)
    monkeypatch.setenv("AUGMENT_TEST_SETTING", "before")
    assert in_processes(where_a_benchmark_worker_runs, [task, task], 2)[0][0] == "before"
    # Set after the first call (which may have started a fork server): a model trained in
    # a notebook after the user changed a setting or folder must see the change.
    monkeypatch.setenv("AUGMENT_TEST_SETTING", "after")
    monkeypatch.chdir(tmp_path)
    found = in_processes(where_a_benchmark_worker_runs, [task, task], 2)
    assert found == [("after", str(tmp_path), 1)] * 2  # one torch thread each


def test_smoke_sizes_give_way_to_the_settings_a_caller_sets(tmp_path):
    """`--smoke --seeds 0` is the caller's mistake, said as one, not silently 3 seeds."""
    with pytest.raises(AugmentError, match="seeds"):
        ag.classify(real="digits", out=tmp_path, smoke=True, seeds=0)
    with pytest.raises(AugmentError, match="epochs"):
        ag.detect(real=str(tmp_path), out=tmp_path, smoke=True, epochs=0)


def test_a_negative_split_seed_is_refused_before_any_data_is_read():
    from augment.bench.detect import DetectSettings

    with pytest.raises(AugmentError, match="split_seed must be at least 0, got -1"):
        ClassifySettings(split_seed=-1)
    with pytest.raises(AugmentError, match="split_seed must be at least 0, got -2"):
        DetectSettings(real="nowhere", split_seed=-2)


@pytest.mark.parametrize("ratio", ["inf", "nan", "1,inf"])
def test_a_ratio_no_image_count_can_be_made_of_is_refused_in_one_line(tmp_path, capsys, ratio):
    """`--ratios inf` crashed as the augmented arm counted its images (OverflowError)."""
    out = tmp_path / "bench"
    code, _, err = cli(capsys, "bench", "classify", "--ratios", ratio, "--out", out, "--smoke")
    line = error_line(err)
    assert code == 2 and "--ratios must be finite and greater than 0, got" in line
    assert not out.exists()
    with pytest.raises(AugmentError, match="lr must be finite"):
        ClassifySettings(lr=math.inf)


@pytest.mark.parametrize(
    ("flags", "said", "remedy"),
    [
        (
            {"filtered": [True] * 4, "duplicate": [True, False, False, False]},
            "all 4 images of the real classes are flagged (filtered 4, duplicate 1)",
            "--min-concept-score 0`), or render more",
        ),
        ({"black": [True] * 4}, "are flagged (black 4)", "shows them with their flags"),
    ],
)
def test_a_synthetic_set_whose_images_are_all_flagged_says_so(
    tmp_path, capsys, flags, said, remedy
):
    """Its class names match: it said they did not, and that concept names must match."""
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    run = write_fake_run(tmp_path / "run", images, np.array([1, 2, 3, 9]), flags)
    code, _, err = cli(capsys, "bench", "classify", "--synthetic", run, "--out", tmp_path / "b")
    line = error_line(err)
    assert code == 2 and said in line and remedy in line and "must match" not in line
    assert "benchmarks train on unflagged images only" in line


def test_both_detector_arms_warm_up_over_as_many_steps(tmp_path, monkeypatch):
    """Real-only trains more epochs of fewer images (the same steps as augmented), and
    ultralytics counts warm-up and mosaic's closing epochs in epochs: stretched by the arm's
    epochs, they cover as many steps in both arms (real-only had half the warm-up, and mosaic
    for half its training where the augmented arm had none)."""
    import ultralytics

    from augment.bench.detect import DetectSettings, train_and_evaluate

    asked = {}

    class Recorder:
        def __init__(self, model):
            pass

        def train(self, **settings):
            asked[settings["epochs"]] = settings
            raise InterruptedError  # what is asked is all this test reads

    monkeypatch.setattr(ultralytics, "YOLO", Recorder)
    settings = DetectSettings(real="x", epochs=7, warmup_epochs=1.0)
    for epochs in (7, 14):  # augmented, real-only with half the images
        with pytest.raises(InterruptedError):
            train_and_evaluate(tmp_path / "data.yaml", tmp_path / "run", settings, 0, epochs)
    assert (asked[7]["warmup_epochs"], asked[7]["close_mosaic"]) == (1.0, 10)
    assert (asked[14]["warmup_epochs"], asked[14]["close_mosaic"]) == (2.0, 20)
