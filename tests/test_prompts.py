"""Templates, attributes, negative prompts and the text encoder's length limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from augment.errors import AugmentError, SpecError
from augment.generate.tiny import build_tokenizer
from augment.prompting import build_prompts, enforce_token_limit, token_count
from augment.taxonomy import load_concepts


@pytest.fixture(scope="module")
def weeds():
    return load_concepts("weeds", max_concepts=2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_concept_fields_fill_the_template(weeds):
    (prompt,) = build_prompts(weeds[:1], ["{name} ({scientific_name}), {supercategory}"], "", 1)
    assert prompt.text == "chinee apple (Ziziphus mauritiana), deepweeds"


def test_unknown_placeholder_is_an_error_that_lists_the_fields(weeds):
    with pytest.raises(SpecError, match=r"unknown placeholder \{colour\}.*\{name\}"):
        build_prompts(weeds, ["a {colour} {name}"], "", 1)


def test_a_misspelt_placeholder_in_a_job_file_is_named_at_its_line(tmp_path):
    from augment.config import load_spec

    job = tmp_path / "job.yaml"
    job.write_text(
        "name: t\ntaxonomy: {source: weeds}\ngeneration: {model: builtin:tiny-sd}\n"
        "prompts:\n  attributes:\n    soil: [clay]\n"
        "  templates:\n    - a {name} on {soil}\n    - a {nmae} on {soil}\n"
    )
    with pytest.raises(
        SpecError, match=r"job.yaml, line 7: prompts.templates: unknown placeholder \{nmae\} in"
    ):
        load_spec(job)
    job.write_text(job.read_text().replace("{nmae}", "{name}"))
    assert load_spec(job).prompts.templates[1] == "a {name} on {soil}"  # its own slot is known


def test_exhaustive_combines_every_attribute_value(weeds):
    attributes = {"viewpoint": ["top", "side"], "lighting": ["day", "night", "dusk"]}
    prompts = build_prompts(
        weeds, ["{name}, {viewpoint}, {lighting}"], "", 6, attributes, "exhaustive"
    )
    texts = [p.text for p in prompts if p.concept == weeds[0]]
    assert len(set(texts)) == 6
    assert texts[0] == "chinee apple, top, day" and texts[-1] == "chinee apple, side, dusk"


def test_exhaustive_uses_every_template_when_images_are_fewer_than_combinations(weeds):
    """3 templates x 5 viewpoints x 4 lightings: 6 images once were all the first template's,
    5 of them of one lighting."""
    templates = ["a {name}, {viewpoint}, {lighting}", "the weed {name}, {viewpoint}", "{name}"]
    prompts = build_prompts(weeds[:1], templates, "", 6, {}, "exhaustive")
    texts = [p.text for p in prompts]
    assert texts[:3] == [
        "a chinee apple, front view, daylight",
        "the weed chinee apple, front view",
        "chinee apple",
    ]
    first = [t.split(", ")[1:] for t in texts if t.startswith("a ")]
    assert first == [
        ["front view", "daylight"],
        ["side view", "overcast light"],
        ["top-down view", "golden hour light"],
    ]
    assert [t.split(", ")[1] for t in texts if t.startswith("the weed")] == [
        "front view",
        "side view",
    ]


def test_exhaustive_renders_every_combination_once_then_cycles(weeds):
    templates = ["a {name}, {viewpoint}, {lighting}", "the weed {name}, {viewpoint}", "{name}"]
    attributes = {"viewpoint": ["top", "side", "close"], "lighting": ["day", "night"]}
    count = 3 * 2 + 3 + 1
    prompts = build_prompts(weeds[:1], templates, "", 2 * count, attributes, "exhaustive")
    texts = [p.text for p in prompts]
    assert len(set(texts[:count])) == count and texts[count:] == texts[:count]
    assert {t for t in texts if t.startswith("a ")} == {
        f"a chinee apple, {v}, {lit}" for v in ("top", "side", "close") for lit in ("day", "night")
    }


def test_the_exhaustive_order_holds_every_combination_once_and_spreads_each_slot():
    """Any prefix of the order meets each slot's values evenly (counts apart by one at most):
    the nested order gave 5 images of one lighting before the next."""
    import itertools
    from collections import Counter

    from augment.prompting import spread_product

    for sizes in [*itertools.product(range(1, 7), repeat=2), (5, 4, 3), (2, 4, 6), (4, 4, 2)]:
        combos = spread_product(list(sizes))
        assert sorted(combos) == list(itertools.product(*map(range, sizes))), sizes
        for end in range(1, len(combos) + 1):
            for slot, size in enumerate(sizes):
                counts = Counter(combo[slot] for combo in combos[:end])
                assert max(counts.values()) - min(counts.get(v, 0) for v in range(size)) <= 1


def test_sampled_attributes_are_deterministic_and_from_the_lists(weeds):
    attributes = {"viewpoint": ["top", "side", "close"]}
    first = build_prompts(weeds, ["{name}, {viewpoint}, {lighting}"], "neg", 12, attributes)
    second = build_prompts(weeds, ["{name}, {viewpoint}, {lighting}"], "neg", 12, attributes)
    assert [p.text for p in first] == [p.text for p in second]
    viewpoints = {p.text.split(", ")[1] for p in first}
    assert viewpoints <= {"top", "side", "close"} and len(viewpoints) > 1
    assert all(p.negative == "neg" for p in first)
    lighting = {p.text.split(", ")[2] for p in first}  # a default slot, no list in the spec
    assert lighting <= {"daylight", "overcast light", "golden hour light", "studio lighting"}


def test_long_prompts_error_with_the_token_count(weeds, tokenizer):
    prompts = build_prompts(weeds, ["{name} " + "photo " * 80], "", 1)
    count = token_count(tokenizer, prompts[0].text)
    with pytest.raises(
        SpecError, match=rf"exceed the text encoder's 77 tokens, e.g. {count} tokens"
    ):
        enforce_token_limit(prompts, tokenizer, 77, "error")


def test_long_prompts_truncate_to_fit(weeds, tokenizer):
    prompts = build_prompts(weeds, ["{name}, {definition} " + "photo " * 80], "", 1)
    short = enforce_token_limit(prompts, tokenizer, 77, "truncate")
    for before, after in zip(prompts, short, strict=True):
        assert token_count(tokenizer, after.text) <= 77 < token_count(tokenizer, before.text)
        assert before.text.startswith(after.text)
        kept = len(after.text.split())  # the most words that fit: one more is over the limit
        one_more = " ".join(before.text.split()[: kept + 1])
        assert token_count(tokenizer, one_more) > 77


def test_truncation_keeps_the_concept_name_or_names_the_template(weeds, tokenizer):
    """Truncation keeps a prompt's start: a name after a long preamble was cut away, and both
    weeds got the same nameless prompt."""
    after = build_prompts(weeds, ["a photo of {name}, " + "sharp focus, " * 40], "", 1)
    short = enforce_token_limit(after, tokenizer, 77, "truncate")
    assert [p.text.split(",")[0] for p in short] == [
        "a photo of chinee apple",
        "a photo of lantana",
    ]
    preamble = "a detailed photo, " + "sharp focus, " * 40 + "of {scientific_name}"
    before = build_prompts(weeds, [preamble, "{name}"], "", 2)
    with pytest.raises(
        SpecError,
        match=r"^prompts.on_long_prompt: truncate would cut the concept's name from 2 prompt\(s\), "
        r"e.g. 'chinee apple' from template 'a detailed photo, sharp focus.*\.\.\.' \(its text up "
        r"to \{scientific_name\} alone is over the text encoder's 77 tokens\); move "
        r"\{scientific_name\} nearer the template's start",
    ):
        enforce_token_limit(before, tokenizer, 77, "truncate")


def test_short_prompts_pass_unchanged(weeds, tokenizer):
    prompts = build_prompts(weeds, ["a photo of {name}"], "blurry", 2)
    assert enforce_token_limit(prompts, tokenizer, 77, "error") == prompts


def test_negative_prompt_too_long_is_an_error(weeds, tokenizer):
    prompts = build_prompts(weeds, ["{name}"], "blurry " * 90, 1)
    with pytest.raises(SpecError, match="negative_prompt has .* tokens"):
        enforce_token_limit(prompts, tokenizer, 77, "truncate")


def test_shipped_jobs_plan_offline_and_stably(tmp_path: Path):
    from augment.config import load_spec
    from augment.job import plan_for

    repo = Path(__file__).resolve().parents[1]
    for job in ("coco-txt2img", "weeds-txt2img", "wordnet-definitions", "demo"):
        spec = load_spec(repo / "jobs" / f"{job}.yaml")
        first, second = plan_for(spec), plan_for(spec)
        assert [(i.item_id, i.seed) for i in first] == [(i.item_id, i.seed) for i in second]
        assert len({i.item_id for i in first}) == len(first) > 0


def test_a_template_naming_no_concept_is_refused_for_several_concepts(weeds):
    """Every class got "a photo of a plant": indistinguishable synthetic classes. One concept
    (a service request's own prompt) may have a fixed prompt."""
    with pytest.raises(SpecError, match="names no concept field, so each of the 2 concepts"):
        build_prompts(weeds, ["a photo of a plant"], "", 1)
    (prompt,) = build_prompts(weeds[:1], ["a photo of a plant"], "", 1)
    assert prompt.text == "a photo of a plant"


def test_a_field_some_concepts_lack_is_refused_naming_the_template_and_a_concept():
    """COCO's concepts have no hypernym: "a photo of a {hypernym}, a {name}" gave "a photo of
    a , a person" for every class."""
    coco = load_concepts("coco", max_concepts=3)
    with pytest.raises(
        SpecError,
        match=r"'a photo of a \{hypernym\}, a \{name\}' reads \{hypernym\}, which 3 of the 3 "
        r"concepts lack \(e.g. 'person'\).*use a field they all have \(\{name\}, \{definition\}, "
        r"\{supercategory\}, \{synset\}\), or a list file of yours that gives each concept one "
        r"\(its `hypernyms:` key\)$",
    ):
        build_prompts(coco, ["a {name}", "a photo of a {hypernym}, a {name}"], "", 2)
    assert build_prompts(coco, ["a {name}, a kind of {supercategory}"], "", 1)[0].text == (
        "a person, a kind of person"
    )


def test_a_list_file_concept_without_a_definition_is_named(tmp_path):
    listing = tmp_path / "mine.yaml"
    listing.write_text(
        "concepts:\n  - {name: lantana, definition: a flowering shrub}\n  - {name: parkinsonia}\n"
    )
    concepts = load_concepts(str(listing))
    with pytest.raises(SpecError, match=r"1 of the 2 concepts lack \(e.g. 'parkinsonia'\)"):
        build_prompts(concepts, ["{name}, {definition}"], "", 1)
    tokens = {"lantana": "<sks>"}  # {token} is blank for a concept no fine-tune taught
    texts = [p.text for p in build_prompts(concepts, ["a {token} {name}"], "", 1, tokens=tokens)]
    assert texts == ["a <sks> lantana", "a parkinsonia"]


def test_prompts_and_plans_show_brackets_and_tell_two_concepts_of_one_name_apart(tmp_path, capsys):
    """ "[ugly]" is prompt syntax rich took for markup (it vanished, or ended in a fault), and
    WordNet's two "discard" senses were counted as one concept."""
    from tests.conftest import cli

    job = tmp_path / "job.yaml"
    job.write_text(
        "name: t\ntaxonomy: {source: 'wordnet:abandonment.n.03'}\n"
        "prompts: {templates: ['{name}, [ugly]'], negative_prompt: '[blurry]',"
        " images_per_concept: 2}\ngeneration: {model: builtin:tiny-sd}\n"
    )
    code, out, err = cli(capsys, "prompts", job)
    assert code == 0, err
    assert "discard, [ugly]" in out and "negative prompt: '[blurry]'" in out
    code, out, err = cli(capsys, "plan", job)
    assert code == 0, err
    assert "discard (discard.n.02)" in out and "discard (discard.n.03)" in out
    assert "6 work items for 3 concepts" in out
    code, out, err = cli(capsys, "prompts", job, "--limit", "3")
    assert code == 0 and "the first 3 prompts shown (2 per concept in the job)" in out


def test_a_prompt_preview_builds_only_the_prompts_it_shows(tmp_path):
    """`augment prompts --limit 5` built every prompt of the job first: a minute for a
    700,000-prompt WordNet job. A million per concept now previews at once."""
    import time

    import augment as ag
    from augment.config import load_spec

    spec = load_spec(
        {
            "name": "t",
            "taxonomy": {"source": "weeds", "max_concepts": 3},
            "prompts": {"templates": ["a photo of {name}"], "images_per_concept": 1_000_000},
            "generation": {"model": "builtin:digits"},
        }
    )
    started = time.monotonic()
    shown = ag.prompts(spec, limit=4)
    assert time.monotonic() - started < 5  # the whole job's 3,000,000 took far longer
    assert [(p.concept.name, p.variant) for p in shown] == [
        ("chinee apple", 0),
        ("chinee apple", 1),
        ("chinee apple", 2),
        ("chinee apple", 3),
    ]
    with pytest.raises(AugmentError, match="limit must be at least 1"):
        ag.prompts(spec, limit=0)


def test_a_wordnet_supercategory_reads_as_a_word_in_a_prompt():
    """A WordNet concept's supercategory is its parent synset's id: the prompt read
    "a kind of weed.n.01"; the exports keep the id."""
    weeds = [c for c in load_concepts("wordnet:weed.n.01") if c.id == "alligator_weed.n.01"]
    assert weeds[0].supercategory == "weed.n.01"
    (prompt,) = build_prompts(weeds, ["a {name}, a kind of {supercategory}"], "", 1)
    assert prompt.text == "a alligator weed, a kind of weed"
    coco = load_concepts("coco", max_concepts=1)
    (prompt,) = build_prompts(coco, ["a {name}, a kind of {supercategory}"], "", 1)
    assert prompt.text == "a person, a kind of person"


def test_a_single_file_without_its_config_folder_is_what_the_preview_warns_of(tmp_path, capsys):
    """It said the tokenizer was "not on this machine", of a checkpoint lying right there."""
    from tests.conftest import cli

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"unread: a preview loads only the tokenizer")
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: t\ntaxonomy: {source: digits, max_concepts: 2}\n"
        "prompts: {templates: ['a digit {name}']}\n"
        f"generation: {{model: {checkpoint}}}\n"
    )
    code, out, err = cli(capsys, "prompts", job)
    assert code == 0, err
    assert "is a single-file checkpoint, and its tokenizer is in the diffusers folder" in err
    assert "generation.config names, which the spec does not set" in err
    assert "a digit zero" in out


def test_concepts_the_templates_cannot_tell_apart_are_said(caplog):
    """WordNet's two griffons were both "a photo of a griffon", and {scientific_name} read the
    name where a concept has none, though the README said such a template was refused."""
    from augment.prompting import warn_prompt_gaps
    from augment.taxonomy.concept import Concept

    concepts = [
        Concept("griffon.n.02", "griffon", 1, "griffon.n.02", "a breed of toy dogs"),
        Concept("griffon.n.03", "Griffon", 2, "griffon.n.03", "a large vulture"),
        Concept("nettle.n.01", "nettle", 3, "nettle.n.01", scientific_name=""),
    ]
    warn_prompt_gaps(concepts, ["a photo of a {name}"])
    assert "1 concept(s) get the same prompts as another" in caplog.text
    assert "e.g. 'griffon', griffon.n.02, and 'Griffon', griffon.n.03" in caplog.text
    caplog.clear()
    warn_prompt_gaps(concepts, ["a photo of a {name}, {definition}"])  # told apart
    assert "same prompts" not in caplog.text
    warn_prompt_gaps(concepts, ["{name} ({scientific_name})"])
    assert "{scientific_name}: 3 of the 3 concepts have none (e.g. 'griffon')" in caplog.text


def test_a_negative_prompt_is_text_whose_braces_need_no_escaping(tmp_path):
    """It is used as it is, yet was parsed as a template: "smiley :}" was "malformed", and
    "{{x}}" passed, giving the model both braces."""
    from augment.config import load_spec
    from tests.conftest import TINY_JOB

    job = tmp_path / "job.yaml"
    for negative, refused in (("smiley :}", False), ("{{x}}", True), ("a { name }", True)):
        job.write_text(
            TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")).replace(
                "  images_per_concept: 3\n",
                f"  images_per_concept: 3\n  negative_prompt: '{negative}'\n",
            )
        )
        if refused:
            with pytest.raises(SpecError, match="its placeholders are not filled"):
                load_spec(job)
        else:
            assert load_spec(job).prompts.negative_prompt == negative


def test_a_negative_prompt_without_guidance_is_said_to_be_unused(tmp_path, caplog):
    """At guidance_scale 1 there is no classifier-free guidance, so the negative prompt
    changes nothing: "blurry" and "a photo" gave the same pixels, without a word."""
    from augment.config import load_spec
    from augment.job import check_inputs
    from tests.conftest import TINY_JOB

    job = tmp_path / "job.yaml"
    for guidance, said in ((1.0, True), (3.0, False)):
        caplog.clear()
        job.write_text(
            TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
            .replace("  images_per_concept: 3\n", "  images_per_concept: 3\n  negative_prompt: x\n")
            .replace("  batch_size: 4\n", f"  batch_size: 4\n  guidance_scale: {guidance}\n")
        )
        check_inputs(load_spec(job))
        assert ("negative_prompt is not used at guidance_scale 1" in caplog.text) == said


def test_a_taxonomy_of_very_many_concepts_is_said(tmp_path, caplog, monkeypatch):
    """wordnet:entity.n.01 expands to 74,373 concepts, and a job of it planned them all
    without a word."""
    from augment import job
    from augment.config import load_spec
    from tests.conftest import TINY_JOB

    monkeypatch.setattr(job, "MANY_CONCEPTS", 2)  # the digits' 3 stand for 74,373
    monkeypatch.setattr(job, "SAID", set())  # said once a process: not yet in this one
    path = tmp_path / "job.yaml"
    path.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    job.prompts_for(load_spec(path))
    assert "taxonomy digits expands to 3 concepts, 9 images at 3 a concept" in caplog.text
