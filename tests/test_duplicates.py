"""Near-duplicates: planted copies are caught, distinct digits are not, flags are stable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from augment.digits.data import DIGIT_NAMES, load_digit_images
from augment.duplicates import flag_duplicates, perceptual_hash
from augment.generate.engine import encode_png
from augment.sinks.parquet import write_shard


def record(item_id: str, label: int, pixels: np.ndarray, **flags) -> dict:
    return {
        "item_id": item_id,
        "concept_name": DIGIT_NAMES[label],
        "image": {"bytes": encode_png(pixels), "path": f"{item_id}.png"},
        "phash": perceptual_hash(pixels),
        **flags,
    }


def write_run(shards: Path, records: list[dict], per_shard: int = 100) -> None:
    for index, start in enumerate(range(0, len(records), per_shard)):
        write_shard(shards, f"part-{index:05d}.parquet", records[start : start + per_shard])


def near_copy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A little noise (sigma 4 grey levels) and a 1-pixel shift each way."""
    shifted = np.roll(pixels.astype(np.float64), tuple(rng.choice([-1, 1], 2)), axis=(0, 1))
    return np.clip(shifted + rng.normal(0, 4, shifted.shape), 0, 255).round().astype(np.uint8)


def flags_of(shards: Path) -> dict[str, tuple[bool, str | None]]:
    rows = pq.read_table(shards, columns=["item_id", "duplicate", "duplicate_of"]).to_pylist()
    return {r["item_id"]: (r["duplicate"], r["duplicate_of"]) for r in rows}


def test_planted_copies_are_caught_and_1000_distinct_digits_are_not(tmp_path: Path):
    images, labels = load_digit_images(32)
    originals = [record(f"real-{i}", labels[i], images[i]) for i in range(1000)]
    rng = np.random.default_rng(0)
    chosen = rng.choice(1000, 40, replace=False)
    planted = [
        record(
            f"copy-{k}",
            labels[i],
            images[i] if k < 20 else near_copy(images[i], rng),  # 20 exact, 20 near
        )
        for k, i in enumerate(chosen)
    ]
    shards = tmp_path / "shards"
    write_run(shards, originals + planted)
    order = [r["item_id"] for r in originals + planted]

    assert flag_duplicates(shards, order) >= 38
    flags = flags_of(shards)
    caught = [k for k, i in enumerate(chosen) if flags[f"copy-{k}"] == (True, f"real-{i}")]
    assert len(caught) >= 38  # >= 95 %
    assert not any(flags[r["item_id"]][0] for r in originals)

    # A second pass (a resumed run) finds the same and rewrites nothing.
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    flag_duplicates(shards, order)
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before


def test_the_rendered_thumbnails_give_the_flags_the_images_give_without_decoding_one(
    tmp_path: Path, monkeypatch
):
    """A run's records carry their thumbnail (`encode_image`, beside the render loop); older
    shards without one are decoded: both give the same flags."""
    from augment.duplicates import Picture
    from augment.generate.engine import encode_image

    images, labels = load_digit_images(32)
    rng = np.random.default_rng(1)
    chosen = rng.choice(300, 12, replace=False)
    pixels = [*images[:300], *(near_copy(images[i], rng) for i in chosen)]
    owners = [*labels[:300], *labels[chosen]]
    ids = [f"r{i:03d}" for i in range(len(pixels))]
    decoded, stored = tmp_path / "decoded", tmp_path / "stored"
    write_run(
        decoded, [record(i, label, p) for i, label, p in zip(ids, owners, pixels, strict=True)]
    )
    rendered = []
    for item_id, label, p in zip(ids, owners, pixels, strict=True):
        _, phash, thumb = encode_image(p, None)
        rendered.append({**record(item_id, label, p), "phash": phash, "thumb": thumb})
    write_run(stored, rendered)

    assert flag_duplicates(decoded, ids) >= 11

    def decode(*_):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(Picture, "of", decode)
    flag_duplicates(stored, ids)
    assert flags_of(stored) == flags_of(decoded)
    assert [r["phash"] for r in rendered] == [perceptual_hash(p) for p in pixels]


def test_the_original_is_the_first_in_plan_order_and_flagged_images_are_nobodys_original(
    tmp_path: Path,
):
    images, labels = load_digit_images(32)
    seven = int(np.flatnonzero(labels == 7)[0])
    rows = [
        record("b", 7, images[seven]),
        record("a", 7, images[seven]),
        record("c", 7, images[seven], filtered=True),
    ]
    shards = tmp_path / "shards"
    write_run(shards, rows)
    rewritten: set[str] = set()
    flag_duplicates(shards, ["c", "b", "a"], rewritten=rewritten)  # plan order decides
    assert flags_of(shards) == {"b": (False, None), "a": (True, "b"), "c": (False, None)}
    assert rewritten == {"part-00000.parquet"}  # `augment filter` counts it (it said 0)
    flag_duplicates(shards, ["a", "b", "c"])
    assert flags_of(shards) == {"b": (True, "a"), "a": (False, None), "c": (False, None)}
    unchanged: set[str] = set()
    flag_duplicates(shards, ["a", "b", "c"], rewritten=unchanged)
    assert unchanged == set()


def test_img2img_renders_that_repeat_their_source_are_flagged_with_its_id(tmp_path: Path):
    """At strength 0.2 the digits model leaves some real digits almost as they were."""
    from PIL import Image

    from augment.config import load_spec
    from augment.job import RunOptions, run_job
    from tests.conftest import REPO

    images, labels = load_digit_images(32)
    for i in range(12):
        folder = tmp_path / "real" / DIGIT_NAMES[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    overrides = {
        "source.path": str(tmp_path / "real"),
        "source.limit": 12,
        "generation.strength": 0.2,
        "generation.height": 32,
        "generation.width": 32,
        "output.dir": str(tmp_path / "out"),
        "output.formats": ["parquet"],
    }
    spec = load_spec(REPO / "jobs" / "tiny" / "img2img.yaml", overrides)
    result = run_job(spec, RunOptions(distributor="local"))
    rows = pq.read_table(tmp_path / "out" / "shards").to_pylist()
    repeats = [r for r in rows if r["duplicate"]]
    assert 0 < result.duplicates == len(repeats) < len(rows)
    assert all(r["duplicate_of"] == r["source_image_id"] for r in repeats)
    # Filtering again against a real pool (here an empty one) still compares with the sources.
    from augment.job import refilter

    before = flags_of(tmp_path / "out" / "shards")
    refilter(tmp_path / "out", real=[], real_name="none")
    assert flags_of(tmp_path / "out" / "shards") == before


def test_filter_real_flags_copies_of_the_benchmarks_real_pool(tmp_path: Path, capsys):
    """`augment filter OUT --real digits`: a render that repeats a real pool digit names it."""
    from augment.config import load_spec
    from augment.job import RunOptions, run_job
    from augment.sinks.parquet import next_shard_index
    from tests.conftest import TINY_JOB, cli

    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    run_job(load_spec(job), RunOptions(distributor="local"))
    shards = tmp_path / "out" / "shards"
    images, labels = load_digit_images(32)
    pool_rows = [int(image_id.split("-")[1]) for image_id in _pool_ids()]
    pool_row = next(row for row in pool_rows if labels[row] == 1)  # a real 'one' of the pool
    copy = record("copy-of-real", 1, images[pool_row])
    write_shard(shards, f"part-{next_shard_index(shards):05d}.parquet", [copy])

    code, stdout, _ = cli(capsys, "filter", tmp_path / "out", "--real", "digits")
    assert code == 0 and "duplicate" in stdout
    flags = flags_of(shards)
    assert flags["copy-of-real"] == (True, f"digits-{pool_row}")
    assert sum(flag for flag, _ in flags.values()) == 1  # the tiny model's renders repeat none


def _pool_ids() -> list[str]:
    from augment.bench.data import load_real

    return load_real("digits", 8).pool.ids


def test_two_concepts_whose_names_slug_alike_are_not_each_others_duplicates(tmp_path: Path):
    """ "C++" and "C#" both slug to "c": an image of one is no repeat of the other's, while a
    copy within one concept still is."""
    images, _ = load_digit_images(32)
    concepts = {"lang-cpp": "C++", "lang-csharp": "C#"}
    records = [
        {
            **record(f"{concept_id}-{k}", 0, images[k]),
            "concept_id": concept_id,
            "concept_name": name,
        }
        for concept_id, name in concepts.items()
        for k in range(2)
    ]
    copy = {**records[0], "item_id": "lang-cpp-copy"}
    shards = tmp_path / "shards"
    write_run(shards, [*records, copy])

    assert flag_duplicates(shards, [r["item_id"] for r in [*records, copy]]) == 1
    flags = flags_of(shards)
    assert flags["lang-cpp-copy"] == (True, "lang-cpp-0")
    assert not any(flags[r["item_id"]][0] for r in records)


def test_an_image_is_never_flagged_a_duplicate_of_itself(tmp_path: Path):
    """A shard copied into OUT held item ids already there: each copy was flagged a duplicate
    of itself (`duplicate_of` its own id), and both left the exports."""
    from augment.duplicates import Picture, find_duplicates

    images, _ = load_digit_images(32)
    twice = [Picture.of("a", "zero", images[0]), Picture.of("a", "zero", images[0])]
    assert find_duplicates(twice) == {}
    assert find_duplicates([*twice, Picture.of("b", "zero", images[0])]) == {"b": "a"}


def test_the_block_mean_floor_never_exceeds_the_verdict_so_it_skips_no_repeat():
    """Images that share a layout passed the 8 x 8 gate by the thousand, and the full verdict
    of each took an hour at 20,000 images of one concept: the floor skips them first, and it
    may, because it is never above the verdict's own distance."""
    from augment.duplicates import (
        PIXEL_TOLERANCE,
        contrasts,
        cores_and_shifts,
        distance_floor,
        shifted_distances,
    )

    rng = np.random.default_rng(0)
    base = rng.normal(0, 40, (32, 32))
    thumbs = np.clip(128 + base + rng.normal(0, 20, (200, 32, 32)), 0, 255).astype(np.float32)
    thumbs[100] = np.roll(thumbs[3], 1, axis=0)  # a repeat, a pixel down
    spread = contrasts(thumbs)
    cores, shifts = cores_and_shifts(thumbs)
    for j in (1, 57, 100, 199):
        earlier = np.arange(j)
        exact = shifted_distances(thumbs[earlier], spread[earlier], thumbs[j], spread[j])
        floor = distance_floor(cores[earlier], spread[earlier], shifts[j], spread[j])
        assert (floor <= exact + 1e-5).all()
        others = np.arange(j) != 3 if j == 100 else slice(None)
        assert (floor[others] > PIXEL_TOLERANCE).mean() > 0.95  # the rest: skipped by it
        if j == 100:
            assert exact[3] < PIXEL_TOLERANCE  # the repeat stays for the verdict, which finds it
