from augment.config import load_spec
from augment.job import limit_plan, plan_for
from augment.planning import read_plan, write_plan
from augment.prompting import build_prompts
from augment.taxonomy import load_concepts


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
