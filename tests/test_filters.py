"""The filter stage: scores on every record, flags under the minimum, flagged images left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from augment.config import FilterSpec, load_spec, locate
from augment.digits.data import DIGIT_NAMES, digit_splits, load_digit_images
from augment.errors import ModelError
from augment.filters import ImageFilter
from augment.generate.engine import encode_png
from augment.job import RunOptions, run_job
from augment.sinks import export
from tests.conftest import TINY_JOB

LOCAL = RunOptions(distributor="local")


def scorer_at(spec: FilterSpec) -> str:
    """Where the spec's scorer is, as `load_spec` resolves it."""
    return locate(spec.scorer, None, "filters.scorer")


def digit_records(rows: np.ndarray, names: list[str]) -> list[dict]:
    """Real digit scans as generated records would hold them, labelled with `names`."""
    images, _ = load_digit_images(32)
    return [
        {
            "item_id": f"digits-{row}",
            "concept_name": name,
            "prompt": f"a handwritten digit {name}",
            "image": {"bytes": encode_png(images[row]), "path": None},
            "filtered": False,
        }
        for row, name in zip(rows, names, strict=True)
    ]


def test_digits_scorer_keeps_true_digits_and_flags_mislabelled_ones():
    """On the real pool digits (unseen by the scorer), right labels pass, wrong ones do not."""
    _, labels = load_digit_images(8)
    pool = digit_splits()["pool"]
    spec = FilterSpec(scorer="builtin:digits-scorer")
    image_filter = ImageFilter(spec, scorer_at(spec), list(DIGIT_NAMES))
    right = image_filter(digit_records(pool, [DIGIT_NAMES[i] for i in labels[pool]]))
    wrong = image_filter(digit_records(pool, [DIGIT_NAMES[(i + 1) % 10] for i in labels[pool]]))
    assert np.mean([not r["filtered"] for r in right]) >= 0.97
    assert np.mean([r["filtered"] for r in wrong]) >= 0.97
    for record in right + wrong:
        assert 0.0 <= record["concept_score"] <= 1.0 and record["clip_score"] is None
        assert record["filtered"] == (record["concept_score"] < 0.5)
        assert len(record["embedding"]) == 128  # the small CNN's features
        if not record["filtered"]:  # read as its own concept: its own class is the top one
            assert record["scored_as"] == record["concept_name"]


def filtered_job(tmp_path: Path, name: str, filters: str) -> Path:
    job = tmp_path / f"{name}.yaml"
    text = TINY_JOB.replace("OUT_DIR", str(tmp_path / name)) + filters
    job.write_text(text.replace("images_per_concept: 3", "images_per_concept: 4"))
    return job


@pytest.fixture(scope="module")
def scored_and_cut(tmp_path_factory) -> tuple[Path, Path, float]:
    """The same 12 tiny-model images scored by the digits scorer: a run with the default
    minimum, and a run with the minimum at the first one's median score."""
    folder = tmp_path_factory.mktemp("filtered")
    scored = filtered_job(folder, "scored", "filters:\n  scorer: builtin:digits-scorer\n")
    run_job(load_spec(scored), LOCAL)
    scores = pd.read_parquet(folder / "scored" / "shards")["concept_score"]
    median = float(scores.median())
    cut = filtered_job(
        folder,
        "cut",
        f"filters:\n  scorer: builtin:digits-scorer\n  min_concept_score: {median}\n",
    )
    run_job(load_spec(cut), LOCAL)
    return folder / "scored", folder / "cut", median


def test_run_scores_every_image_flags_those_under_the_minimum_and_exports_the_rest(
    scored_and_cut,
):
    scored, out, median = scored_and_cut
    scores = pd.read_parquet(scored / "shards").set_index("item_id")["concept_score"]
    assert scores.between(0, 1).all() and scores.nunique() > 1
    # A minimum at the median splits the same images (the same seeds) into flagged and kept.
    records = pd.read_parquet(out / "shards").set_index("item_id")
    assert len(records) == 12  # nothing is deleted
    assert np.allclose(records["concept_score"], scores.loc[records.index])
    expected = records.index[records["concept_score"] < median]
    assert sorted(records.index[records["filtered"]]) == sorted(expected)
    assert 0 < len(expected) < 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == len(expected)
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 12 - len(expected)
    export(out, ["coco"], include_flagged=True)
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 12


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "shards").iterdir())}


def test_filter_reflags_a_finished_run_as_a_run_with_that_minimum_would(
    scored_and_cut, tmp_path, capsys
):
    """`augment filter` gives the records a run with the new minimum gives (its timings
    aside), without rendering; the run's own minimum, or its own scorer, restores its bytes."""
    from augment.api import refilter
    from tests.conftest import cli

    scored, cut, median = scored_and_cut
    out = tmp_path / "scored"
    shutil.copytree(scored, out)  # filtered here, in a copy: the fixture's runs stay as made
    original = shard_bytes(out)
    scores = pd.read_parquet(out / "shards")["concept_score"]

    code, stdout, _ = cli(capsys, "filter", out, "--min-concept-score", median)
    assert code == 0 and "(stored scores)" in stdout
    refiltered, rendered = (pq.read_table(o / "shards") for o in (out, cut))
    assert refiltered.drop_columns("render_s").equals(rendered.drop_columns("render_s"))
    flagged = int((scores < median).sum())
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 12 - flagged
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == flagged
    assert [h["min_concept_score"] for h in manifest["filter_history"]] == [0.5, median]
    from augment.reporting import synthetic_set_lines  # a report states the filter's minimum

    assert (
        f"{flagged} filtered by `builtin:digits-scorer` under a concept score of {median:g}"
        in (synthetic_set_lines(str(out))[0])
    )

    clip = refilter(out, scorer="builtin:tiny-clip", min_concept_score=0.0)
    assert clip.rescored and clip.after["filtered"] == 0
    assert pd.read_parquet(out / "shards")["clip_score"].notna().all()
    back = refilter(out, scorer="builtin:digits-scorer", min_concept_score=0.5)
    assert back.rescored and shard_bytes(out) == original
    assert len(json.loads((out / "manifest.json").read_text())["filter_history"]) == 4

    code, _, stderr = cli(capsys, "filter", tmp_path / "nowhere")
    assert code == 2 and "holds no finished run" in stderr
    code, _, stderr = cli(capsys, "filter", out, "--min-concept-score", "2")
    expected = f"{out}/job.yaml: filters.min_concept_score (an override): must be <= 1.0, got 2.0"
    assert code == 2 and expected in stderr
    assert shard_bytes(out) == original  # a refused filter touches nothing


def test_clip_scorer_gives_zero_shot_probabilities_and_clip_scores(tmp_path):
    concepts = ["zero", "one", "two"]
    records = digit_records(np.arange(6), [concepts[i % 3] for i in range(6)])
    records[0]["prompt"] = "a handwritten digit zero " * 40  # past CLIP's 77 tokens: truncated
    spec = FilterSpec(scorer="builtin:tiny-clip", min_concept_score=0.0, min_clip_score=0.0)
    kept = ImageFilter(spec, scorer_at(spec), concepts)(records)
    for record in kept:
        assert 0.0 < record["concept_score"] < 1.0 and 0.0 <= record["clip_score"] <= 100.0
        assert not record["filtered"]
    strict = spec.model_copy(update={"min_clip_score": 100.0})
    assert all(r["filtered"] for r in ImageFilter(strict, scorer_at(spec), concepts)(records))


def test_concepts_of_one_name_get_the_whole_score_of_that_name():
    """WordNet's two senses of a word are two concepts of one name: CLIP's probability of that
    text was split in halves between them, so both read as far from their concept."""
    records = digit_records(np.arange(4), ["zero", "one", "zero", "two"])
    spec = FilterSpec(scorer="builtin:tiny-clip", min_concept_score=0.0)
    once = ImageFilter(spec, scorer_at(spec), ["zero", "one", "two"])(records)
    twice = ImageFilter(spec, scorer_at(spec), ["zero", "one", "Zero", "two"])(records)
    for a, b in zip(once, twice, strict=True):
        assert a["concept_score"] == pytest.approx(b["concept_score"])
        assert a["scored_as"] == b["scored_as"]


def test_clip_probabilities_sum_to_one_over_the_jobs_concepts():
    from PIL import Image

    from augment.filters import ClipScorer

    location = scorer_at(FilterSpec(scorer="builtin:tiny-clip"))
    scorer = ClipScorer(location, ["zero", "one", "two", "three"])
    image = Image.fromarray(load_digit_images(32)[0][0])
    scores = scorer([image, image], ["a digit", "a digit"])
    probabilities, clip_scores = scores.probabilities, scores.clip
    assert probabilities.shape == (2, 4) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert np.allclose(probabilities[0], probabilities[1]) and clip_scores[0] == clip_scores[1]
    assert scores.features.shape[0] == 2 and np.allclose(scores.features[0], scores.features[1])


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("  scorer: scorers/missing\n", "filters.scorer: 'scorers/missing' not found"),
        ("  scorer: builtin:nope\n", "filters.scorer: unknown builtin 'nope'"),
        (  # a classifier gives no CLIP score: the minimum would never flag anything
            "  scorer: builtin:digits-scorer\n  min_clip_score: 20\n",
            "filters.min_clip_score: .* is a classifier, which gives no CLIP score",
        ),
        (  # loaded as CLIP, OWLv2's weights flagged every image
            "  scorer: builtin:tiny-owlv2\n",
            "filters.scorer: builtin:tiny-owlv2 is an owlv2 model, not a CLIP model or an "
            "augment classifier",
        ),
    ],
)
def test_a_scorer_that_cannot_filter_fails_before_the_output_is_created(tmp_path, filters, message):
    job = filtered_job(tmp_path, "out", "filters:\n" + filters)
    with pytest.raises(ModelError, match=message):
        run_job(load_spec(job), LOCAL)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("builtin", "what"),
    [
        ("tiny-clipseg", "a clipseg model"),
        ("tiny-grounding-dino", "a grounding-dino model"),
        ("tiny-sam", "a sam model"),
        ("digits", "a diffusers pipeline"),
    ],
)
def test_filter_refuses_a_scorer_that_is_another_kind_of_model_and_touches_nothing(
    scored_and_cut, tmp_path, capsys, builtin, what
):
    """Other transformers models are refused by their config's model_type, in one line,
    before any is loaded (CLIPSeg loaded as CLIP flagged every image; Grounding DINO failed
    inside transformers; SAM printed pages of load reports first)."""
    from tests.conftest import cli, error_line

    scored, _, _ = scored_and_cut
    out = tmp_path / "scored"
    shutil.copytree(scored, out)
    original = shard_bytes(out)
    code, _, err = cli(capsys, "filter", out, "--scorer", f"builtin:{builtin}")
    assert code == 2
    assert error_line(err).startswith(
        f"error: filters.scorer: builtin:{builtin} is {what}, not a CLIP model or an augment "
        "classifier; give a CLIP model"
    )
    assert shard_bytes(out) == original


def test_a_classifier_that_does_not_know_a_concept_is_refused(tmp_path):
    job = filtered_job(tmp_path, "out", "filters:\n  scorer: builtin:digits-scorer\n")
    job.write_text(job.read_text().replace("source: digits", "source: weeds"))
    with pytest.raises(ModelError, match="knows zero, one, .* not .*; use a scorer trained"):
        run_job(load_spec(job), LOCAL)
    assert not (tmp_path / "out").exists()


def test_min_concept_score_is_a_probability(tmp_path):
    from augment.errors import SpecError

    job = filtered_job(
        tmp_path, "out", "filters:\n  scorer: builtin:digits-scorer\n  min_concept_score: 2\n"
    )
    with pytest.raises(SpecError, match=r"line \d+: filters.min_concept_score: must be <= 1"):
        load_spec(job)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("  min_concept_score: 0.9\n", "min_concept_score 0.9 needs a scorer"),
        ("  min_clip_score: 30\n", "min_clip_score 30 needs a scorer"),
    ],
)
def test_a_minimum_without_a_scorer_is_refused_when_the_job_loads(tmp_path, filters, message):
    """Without a scorer nothing is scored: a minimum flagged nothing, in silence ("0 flagged").
    The defaults pass, as every saved job.yaml holds them."""
    from augment.errors import SpecError

    job = filtered_job(tmp_path, "out", "filters:\n" + filters)
    with pytest.raises(SpecError, match=rf"line \d+: filters: {message}, and none is set"):
        load_spec(job)
    plain = filtered_job(tmp_path, "plain", "filters:\n  min_concept_score: 0.5\n")
    assert load_spec(plain).filters.scorer is None


def test_a_resumed_run_keeps_the_last_filter_and_its_history(scored_and_cut, tmp_path):
    """After `augment filter`, a rerun that renders missing images flags them as the filter
    said, not as the job file says, and the manifest keeps the filter's history."""
    from augment.api import refilter

    scored, _, median = scored_and_cut
    out = tmp_path / "scored"
    shutil.copytree(scored, out)
    refilter(out, min_concept_score=median)
    last = sorted((out / "shards").glob("part-*.parquet"))[-1]
    lost = len(pq.read_table(last))
    last.unlink()  # as if the run had stopped before its last block

    job = scored.parent / "scored.yaml"
    result = run_job(load_spec(job, {"output.dir": str(out)}), LOCAL)
    assert result.rendered == lost and result.skipped == 12 - lost
    records = pd.read_parquet(out / "shards")
    assert len(records) == 12
    assert (records["filtered"] == (records["concept_score"] < median)).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filters"]["min_concept_score"] == median
    history = [(h["command"], h["min_concept_score"]) for h in manifest["filter_history"]]
    assert history == [("run", 0.5), ("filter", median), ("run", median)]  # the resumed run
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == int((records["concept_score"] >= median).sum())
    # the run's own count says so too: it said the images its blocks flagged under the job's
    # minimum ("0 flagged" beside new images the filter's minimum flagged)
    last = sorted((out / "shards").glob("part-*.parquet"))[-1]
    scores = pq.read_table(last).column("concept_score").to_pylist()
    refilter(out, min_concept_score=max(scores))  # all of that block but its best flagged
    last.unlink()
    again = run_job(load_spec(job, {"output.dir": str(out)}), LOCAL)
    assert again.rendered == len(scores) >= 2
    assert again.flagged == sum(score < max(scores) for score in scores) >= 1


def test_a_run_without_a_scorer_resumed_after_filter_scorer_scores_its_new_images(
    scored_and_cut, tmp_path
):
    """The job has no scorer; `augment filter --scorer` scored what was there; the images a
    resumed run adds get the filter's scores and flags too (they were left unscored)."""
    from augment.api import refilter
    from augment.errors import SpecError

    _, _, median = scored_and_cut
    job = filtered_job(tmp_path, "plain", "")
    run_job(load_spec(job, {"limit": 6}), LOCAL)
    with pytest.raises(SpecError, match="rendered without a scorer, so it has no scores"):
        refilter(tmp_path / "plain", min_clip_score=20)  # a minimum alone: nothing to compare
    refilter(tmp_path / "plain", "builtin:digits-scorer", median)
    result = run_job(load_spec(job), LOCAL)
    assert (result.rendered, result.skipped) == (6, 6)
    records = pd.read_parquet(tmp_path / "plain" / "shards")
    assert len(records) == 12 and records["concept_score"].notna().all()
    assert (records["filtered"] == (records["concept_score"] < median)).all()


def test_filter_finds_the_runs_relative_scorer_beside_its_job_from_any_folder(
    tmp_path, monkeypatch, capsys
):
    """`augment filter OUT` loads OUT/job.yaml: a scorer named relative to the job file is
    found where the run found it, not in the folder the command is typed in."""
    from tests.conftest import cli

    project = tmp_path / "project"
    shutil.copytree(scorer_at(FilterSpec(scorer="builtin:digits-scorer")), project / "scorer")
    job = project / "job.yaml"
    text = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    job.write_text(text + "filters:\n  scorer: scorer\n  min_concept_score: 0.1\n")
    monkeypatch.chdir(tmp_path)  # elsewhere than the job
    run_job(load_spec(job), LOCAL)
    code, _, err = cli(capsys, "filter", tmp_path / "out", "--min-concept-score", "0.2")
    assert code == 0, err


def gallery_flags(out: Path) -> dict[str, list[str]]:
    """item_id -> the flags OUT/gallery's concept pages show for it."""
    flags = {}
    for page in (out / "gallery").glob("concept-*.html"):
        data = page.read_text().split('id="records">')[1].split("</script>")[0]
        flags.update({r["item_id"]: r["flags"] for r in json.loads(data.replace("<\\/", "</"))})
    return flags


def gallery_totals(out: Path) -> dict[str, int]:
    """concept -> how many images OUT/gallery's page says it has."""
    return {
        page.stem.removeprefix("concept-"): int(page.read_text().split("<p>")[2].split(" ")[0])
        for page in (out / "gallery").glob("concept-*.html")
    }


def test_an_export_with_flagged_images_and_the_gallery_outlive_filter_and_resume(
    scored_and_cut, tmp_path, capsys
):
    """`augment export --include-flagged` made a COCO export that a later `augment filter` or
    resumed run wrote again without the flagged images; a gallery kept showing the old flags."""
    from augment.api import refilter, view
    from tests.conftest import cli

    scored, _, median = scored_and_cut
    out = tmp_path / "scored"
    shutil.copytree(scored, out)
    code, _, err = cli(capsys, "export", out, "--format", "coco", "--include-flagged")
    assert code == 0, err
    code, _, err = cli(capsys, "export", out, "--format", "imagefolder")
    assert code == 0, err
    view(out, per_concept=2)

    result = refilter(out, min_concept_score=median)
    assert 0 < result.after["filtered"] < 12 and result.outputs["gallery"].is_file()
    records = pd.read_parquet(out / "shards").set_index("item_id")
    assert len(json.loads((out / "coco" / "annotations.json").read_text())["images"]) == 12
    filed = [p.stem for p in (out / "imagefolder").glob("*/*.png")]
    assert len(filed) == 12 - result.after["filtered"]
    shown = gallery_flags(out)
    assert len(shown) == 2 * 3  # the gallery's own --per-concept, kept
    for item_id, flags in shown.items():
        assert ("filtered" in flags) == bool(records.loc[item_id, "filtered"])

    last = sorted((out / "shards").glob("part-*.parquet"))[-1]
    last.unlink()  # as if the run had stopped before its last block
    view(out, per_concept=2)  # of what is left
    assert sum(gallery_totals(out).values()) == 12 - len(
        pq.read_table(scored / "shards" / last.name)
    )
    run_job(load_spec(scored.parent / "scored.yaml", {"output.dir": str(out)}), LOCAL)
    assert len(json.loads((out / "coco" / "annotations.json").read_text())["images"]) == 12
    records = pd.read_parquet(out / "shards").set_index("item_id")
    assert len(list((out / "imagefolder").glob("*/*.png"))) == int((~records["filtered"]).sum())
    assert gallery_totals(out) == {"one": 4, "two": 4, "zero": 4} and len(gallery_flags(out)) == 6

    (out / "manifest.json").unlink()  # an interrupted first run has none yet
    code, _, err = cli(capsys, "view", out)
    assert code == 2 and "has no manifest.json: it is not a finished `augment run` output" in err
