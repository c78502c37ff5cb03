import tracemalloc
from pathlib import Path

import pytest

from augment.config import load_spec
from augment.errors import SpecError
from augment.job import limit_plan, plan_for
from augment.planning import read_plan, write_plan
from augment.prompting import build_prompts
from augment.taxonomy import load_concepts
from tests.conftest import TINY_JOB


def test_same_spec_gives_same_item_ids_and_seeds(write_job):
    first = plan_for(load_spec(write_job()))
    second = plan_for(load_spec(write_job()))
    assert [(i.item_id, i.seed) for i in first] == [(i.item_id, i.seed) for i in second]
    assert len({i.item_id for i in first}) == len(first) == 9


def test_job_seed_changes_seeds_not_item_ids(write_job):
    first = plan_for(load_spec(write_job()))
    reseeded = plan_for(load_spec(write_job(), {"seed": 8}))
    assert [i.item_id for i in first] == [i.item_id for i in reseeded]
    assert not {i.seed for i in first} & {i.seed for i in reseeded}


def test_changing_one_template_changes_only_its_items():
    concepts = load_concepts("digits", max_concepts=2)
    before = build_prompts(concepts, ["a {name}", "the digit {name}"], "", 4)
    after = build_prompts(concepts, ["a {name}", "a drawn digit {name}"], "", 4)
    from augment.planning import build_plan

    ids_before = [i.item_id for i in build_plan("j", 0, before)]
    ids_after = [i.item_id for i in build_plan("j", 0, after)]
    kept = [a == b for a, b in zip(ids_before, ids_after, strict=True)]
    assert kept == [True, False, True, False] * 2


def test_limit_spreads_over_concepts(write_job):
    items = plan_for(load_spec(write_job()))
    limited = limit_plan(items, 4)
    assert [i.concept_id for i in limited] == ["zero", "zero", "one", "two"]


def test_plan_round_trips_through_parquet(write_job, tmp_path):
    items = plan_for(load_spec(write_job()))
    write_plan(items, tmp_path / "plan.parquet")
    assert read_plan(tmp_path / "plan.parquet") == items


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("job", ["txt2img", "img2img", "inpaint", "interpolate"])
def test_a_limited_plan_is_the_whole_plan_limited(job, tmp_path):
    """--limit plans only the variants its items use (per concept, or per source image or box),
    and keeps exactly the items the whole plan, limited, keeps."""
    changes = {
        "prompts.images_per_concept": 5,
        "prompts.templates": ["a digit {name}, {viewpoint}", "a drawn {name} in {lighting}"],
        "output.dir": str(tmp_path),
    }
    whole = plan_for(load_spec(REPO / "jobs" / "tiny" / f"{job}.yaml", changes))
    for limit in (1, 9, 10, 11, 23, len(whole) - 1, len(whole), len(whole) + 5):
        limited = plan_for(
            load_spec(REPO / "jobs" / "tiny" / f"{job}.yaml", changes | {"limit": limit})
        )
        assert limited == limit_plan(whole, limit), limit


def test_a_limit_over_a_million_images_per_concept_plans_its_items_alone(write_job):
    """--limit 20 with images_per_concept: 1000000 built every item first: 750 MB and half a
    minute per million items, for 20."""
    job = TINY_JOB.replace("images_per_concept: 3", "images_per_concept: 1000000")
    spec = load_spec(write_job(job.replace("builtin:tiny-sd", "/no/model/here")), {"limit": 20})
    tracemalloc.start()
    try:
        items = plan_for(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    kept = [(i.concept_id, i.variant) for i in items]  # variants 0-6 of zero and one, 0-5 of two
    assert kept == [(c, v) for c in ("zero", "one", "two") for v in range(6 if c == "two" else 7)]
    assert peak < 20 * 2**20


def test_a_limited_plan_checks_the_prompts_of_every_variant(write_job):
    """A trial run --limit 2 refuses a prompt too long for the text encoder that only the
    whole job renders (variant 1's), as the whole job does, before rendering anything."""
    long = "a digit {name} " + "drawn " * 80
    job = TINY_JOB.replace('["a handwritten digit {name}"]', f'["a digit {{name}}", "{long}"]')
    with pytest.raises(SpecError, match=r"3 prompt\(s\) exceed the text encoder's 77 tokens"):
        plan_for(load_spec(write_job(job), {"limit": 2}))
