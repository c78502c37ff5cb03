"""Concept sources: WordNet subtrees, COCO categories, list files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import augment
from augment.config import load_spec
from augment.errors import TaxonomyError
from augment.taxonomy import load_concepts, wordnet
from augment.taxonomy.listfile import load_list_file
from augment.taxonomy.wordnet import lookup_synset, prepare_wordnet_copy
from tests.conftest import TINY_JOB, cli, error_line, images_by_item, run_cli


def show_json(*args: str) -> list[dict]:
    result = run_cli("taxonomy", "show", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_lists_the_synsets_below_weed():
    concepts = show_json("wordnet:weed.n.01")
    assert len(concepts) == 54
    assert len({c["synset"] for c in concepts}) == 54
    assert {"id", "name", "synset", "definition", "category_id"} <= set(concepts[0])
    assert [c["category_id"] for c in concepts] == list(range(1, 55))


def test_depth_and_leaves_filter_the_weed_subtree():
    direct = load_concepts("wordnet:weed.n.01", depth=1)
    leaves = load_concepts("wordnet:weed.n.01", leaves=True)
    assert (len(direct), len(leaves)) == (27, 46)
    assert all(c.hypernyms[-1] == "weed.n.01" for c in direct)
    assert all(c.hypernyms[0] == "entity.n.01" for c in direct)
    assert all(not lookup_synset(c.synset).hyponyms() for c in leaves)


def test_depth_keeps_every_synset_within_that_many_links_by_its_shortest_path():
    """A synset met first along a longer path, too deep to walk on, was not walked again when
    met by a shorter one: event.n.01 at depth 2 gave 98 of its 137 synsets."""
    event = lookup_synset("event.n.01")
    for depth, count in ((1, 10), (2, 137), (3, 821)):
        concepts = load_concepts("wordnet:event.n.01", depth=depth)
        within = {s.name() for s in event.closure(lambda s: s.hyponyms(), depth=depth)}
        synsets = [c.synset for c in concepts]  # nltk's closure: breadth-first, shortest paths
        assert len(synsets) == len(set(synsets)) == len(within) == count
        assert set(synsets) == within


def test_concepts_are_numbered_as_their_tree_is_shown():
    """The order, so the category ids, a user reads off `taxonomy show`: the tree top to bottom,
    children by synset name, a synset with two parents under the one the walk met it from."""
    polygons = load_concepts("wordnet:polygon.n.01", depth=3)
    by_synset = {c.synset: c for c in polygons}
    assert len(polygons) == 34
    assert [c.synset for c in polygons[:3]] == [
        "concave_polygon.n.01", "reentrant_polygon.n.01", "convex_polygon.n.01",
    ]  # fmt: skip
    # delta.n.02 is 3 links down through triangle.n.01 and 4 through isogon.n.01, where the walk
    # placed its parent first: depth 3 keeps it, under that parent
    delta = by_synset["delta.n.02"]
    assert delta.hypernyms[-3:] == (
        "isogon.n.01",
        "regular_polygon.n.01",
        "equilateral_triangle.n.01",
    )
    assert [by_synset[s].category_id for s in ("equilateral_triangle.n.01", "square.n.01")] == [
        delta.category_id - 1, delta.category_id + 1,
    ]  # fmt: skip
    for concept in polygons:  # one tree: each below its parent as shown, numbered after it
        parent = by_synset.get(concept.hypernyms[-1])
        if parent is not None:
            assert concept.hypernyms == (*parent.hypernyms, parent.synset)
            assert concept.category_id > parent.category_id


def test_instances_are_left_out_unless_asked_for(caplog):
    """Named individuals (instance hyponyms) are left out, as ImageNet leaves them out:
    city.n.01 is its three kinds of capital, and a warning says what was left out; with
    instances, its named cities too."""
    cities = load_concepts("wordnet:city.n.01")
    assert [c.name for c in cities] == ["national capital", "provincial capital", "state capital"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # as many as instances: true adds (911: the Potomac hangs below Washington, Mecca Riyadh)
    assert "911 named individuals below it (instance hyponyms, such as Aachen) are left" in warning
    caplog.clear()
    load_concepts("wordnet:weed.n.01")  # none below it
    assert not caplog.records
    named = load_concepts("wordnet:city.n.01", instances=True)
    assert len(named) == 914 and {c.synset for c in cities} < {c.synset for c in named}
    (paris,) = [c for c in named if c.synset == "paris.n.01"]
    assert (paris.name, paris.hypernym) == ("Paris", "national capital")
    kept = load_concepts("wordnet:city.n.01", instances=True, exclude=("paris.n.01",))
    assert len(kept) == 913 and "paris.n.01" not in {c.synset for c in kept}
    with pytest.raises(TaxonomyError, match="depth, leaves and instances apply to wordnet:"):
        load_concepts("digits", instances=True)


def test_a_job_spec_can_ask_for_instances(write_job):
    text = TINY_JOB.replace("source: digits", "source: 'wordnet:river.n.01'\n  instances: true")
    rivers = augment.concepts(load_spec(write_job(text.replace("  max_concepts: 3\n", ""))))
    assert len(rivers) == 200 and {c.hypernym for c in rivers} == {"river"}


def test_cli_shows_instances_when_asked():
    rivers = show_json("wordnet:river.n.01", "--instances")
    assert len(rivers) == 200 and "nile.n.01" in {c["synset"] for c in rivers}


def test_concepts_carry_names_definitions_and_binomials():
    (concept,) = [c for c in load_concepts("wordnet:weed.n.01") if c.id == "alligator_weed.n.01"]
    assert concept.name == "alligator weed"
    assert concept.definition.startswith("prolific South American aquatic weed")
    assert concept.scientific_name == "Alternanthera philoxeroides"
    assert concept.aliases == ("alligator grass",)
    purse = [c for c in load_concepts("wordnet:crucifer.n.01") if c.name == "shepherd's purse"]
    assert purse[0].scientific_name == "Capsella bursa-pastoris"  # a hyphen: an alias before
    # outside plants and animals a capitalised two-word name is a name, not a binomial: a
    # "{scientific_name}" prompt of Paris read "French capital"
    paris = {c.id: c for c in load_concepts("wordnet:national_capital.n.01", instances=True)}
    assert paris["paris.n.01"].scientific_name == ""
    assert "French capital" in paris["paris.n.01"].aliases


def test_exclude_drops_a_synset_and_its_subtree():
    everything = load_concepts("wordnet:weed.n.01")
    nettles = [c for c in everything if "nettle.n.01" in c.hypernyms]
    kept = load_concepts("wordnet:weed.n.01", exclude=("nettle.n.01",))
    assert nettles and len(kept) == len(everything) - 1 - len(nettles)
    assert not any("nettle.n.01" in c.hypernyms for c in kept)


def test_an_exclude_outside_a_wordnet_expansion_is_refused():
    """griffon.n.01 is the gryphon, not the dog: both griffon dogs stayed in, unsaid."""
    with pytest.raises(TaxonomyError, match=r"exclude 'gryphon.n.01' \(winged monster"):
        load_concepts("wordnet:dog.n.01", exclude=("griffon.n.01",))
    kept = load_concepts("wordnet:dog.n.01", exclude=("griffon.n.02",))
    assert "griffon.n.02" not in {c.synset for c in kept}


def test_exclude_of_a_list_drops_a_concept_and_a_misspelt_one_is_refused():
    kept = load_concepts("digits", exclude=("seven",))
    assert len(kept) == 9 and "seven" not in {c.name for c in kept}
    with pytest.raises(TaxonomyError, match=r"exclude 'sevn' is not one of its concepts; did you"):
        load_concepts("digits", exclude=("sevn",))


def test_misspelt_synset_suggests_close_matches():
    with pytest.raises(TaxonomyError, match=r"unknown WordNet synset 'weeed.n.01'; did you mean"):
        load_concepts("wordnet:weeed.n.01")
    with pytest.raises(TaxonomyError, match="weed.n.01"):
        load_concepts("wordnet:weeed.n.01")
    with pytest.raises(TaxonomyError, match="use lemma.pos.NN"):
        load_concepts("wordnet:weed")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("wordnet:weeed.n.01", "did you mean weed.n.01"),
        (
            "wordnet:seven.n.01",
            "expands to no concepts: seven.n.01 has no hyponyms; name a more general synset "
            "(digit.n.01)",
        ),
        (
            "wordnet:river.n.01",
            "expands to no concepts: its 200 hyponyms are all instances (named individuals such "
            "as Aare, Acheron), left out by default; set taxonomy.instances: true (augment "
            "taxonomy show --instances) to include them",
        ),
    ],
)
def test_cli_taxonomy_errors_exit_2_with_one_line(source, expected):
    result = run_cli("taxonomy", "show", source)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_a_list_file_that_is_not_yaml_is_one_line_with_its_line(tmp_path: Path, capsys):
    listed = tmp_path / "weeds.yaml"
    listed.write_text("concepts:\n  - name: lantana\n   scientific_name: Lantana camara\n")
    code, _, err = cli(capsys, "taxonomy", "show", str(listed))
    assert code == 2
    assert error_line(err) == (
        f"error: {listed}, line 3: not valid YAML: expected <block end>, but found "
        "'<block mapping start>'"
    )


def test_wordnet_copy_is_prepared_from_debian_files(tmp_path: Path):
    source = tmp_path / "debian"
    source.mkdir()
    (source / "data.noun").write_text("x")
    (source / "index.noun").write_text("y")
    target = prepare_wordnet_copy(tmp_path / "nltk" / "corpora" / "wordnet", source)
    assert (target / "data.noun").read_text() == "x" and not (target / "data.noun").is_symlink()
    lexnames = (target / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45
    assert lexnames[3] == "03\tnoun.Tops\t1" and lexnames[44] == "44\tadj.ppl\t3"


def test_missing_wordnet_says_how_to_install(tmp_path: Path):
    with pytest.raises(TaxonomyError, match="apt-get install wordnet-base wordnet-sense-index"):
        prepare_wordnet_copy(tmp_path / "wordnet", tmp_path / "no-such-dir")


def test_coco_has_80_categories_with_official_ids():
    concepts = show_json("coco")
    assert len(concepts) == 80
    ids = [c["category_id"] for c in concepts]
    assert (min(ids), max(ids), len(set(ids))) == (1, 90, 80)
    assert 12 not in ids and 26 not in ids  # the gaps in COCO's numbering
    assert len({c["supercategory"] for c in concepts}) == 12
    by_id = {c["category_id"]: c["name"] for c in concepts}
    assert (by_id[1], by_id[10], by_id[90]) == ("person", "traffic light", "toothbrush")


def test_coco_supercategory_filter():
    vehicles = load_concepts("coco:vehicle")
    assert [c.name for c in vehicles] == [
        "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    ]  # fmt: skip
    with pytest.raises(TaxonomyError, match="unknown COCO supercategory 'vehicles'; known:"):
        load_concepts("coco:vehicles")


def test_shipped_synsets_exist_in_wordnet():
    for source in ("coco", "weeds", "digits"):
        for concept in load_concepts(source):
            if concept.synset:
                assert lookup_synset(concept.synset).definition()


def test_weeds_list_has_both_datasets_with_scientific_names():
    weeds = load_concepts("weeds")
    by_dataset = {
        s: [w for w in weeds if w.supercategory == s] for s in {"deepweeds", "cottonweedid15"}
    }
    assert (len(by_dataset["deepweeds"]), len(by_dataset["cottonweedid15"])) == (8, 15)
    assert all(w.scientific_name for w in weeds)
    assert {w.name for w in weeds} >= {"lantana", "parthenium", "palmer amaranth", "waterhemp"}


def test_list_file_errors_name_the_problem(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts:\n  - name: a\n    colour: red\n")
    with pytest.raises(TaxonomyError, match=r"concept 'a' has unknown key\(s\) \['colour'\]"):
        load_list_file(bad)
    bad.write_text("concepts:\n  - name: a\n  - name: A\n")
    with pytest.raises(TaxonomyError, match="concepts 'a' and 'A' share id 'a'; an id is made"):
        load_list_file(bad)
    bad.write_text("concepts:\n  - {name: lantana, category_id: 2}\n  - parthenium\n")
    with pytest.raises(
        TaxonomyError, match="'lantana' and 'parthenium' share category_id 2; a concept without"
    ):
        load_list_file(bad)
    for key, value in (("synset", "[1]"), ("name", "[a, b]"), ("definition", "{a: 1}")):
        bad.write_text(f"concepts:\n  - {{name: x, {key}: {value}}}\n")
        with pytest.raises(TaxonomyError, match=f"{key} must be one piece of text, not a"):
            load_list_file(bad)
    # a letter's marks are kept: Thai "rice" and "news" were one id, नमस्ते lost its signs
    bad.write_text("concepts:\n  - ข้าว\n  - ข่าว\n  - नमस्ते\n")
    assert [c.id for c in load_list_file(bad)] == ["ข้าว", "ข่าว", "नमस्ते"]
    bad.write_text("concepts:\n  - {name: x, hypernyms: [shrub, St. John's wort family]}\n")
    assert load_list_file(bad)[0].hypernym == "St. John's wort family"  # was "St"
    with pytest.raises(TaxonomyError, match="not found: give wordnet:<synset>"):
        load_concepts("no-such-list")
    bad.write_text("concepts:\n  - 猫\n  - 犬\n")  # both were id 'concept': refused
    assert [c.id for c in load_list_file(bad)] == ["猫", "犬"]
    bad.write_text('concepts:\n  - "red\\x1b[2Jfox"\n')
    with pytest.raises(TaxonomyError, match=r"holds a control character; remove it"):
        load_list_file(bad)
    bad.write_text("concepts:\n  - C++\n  - c\n")
    with pytest.raises(TaxonomyError, match="share id 'c'; an id is made of a name's letters"):
        load_list_file(bad)
    for wrong in ("abc", -5, 10**23):  # -5 was "not a whole number"; 10**23 a fault
        bad.write_text(f"concepts:\n  - {{name: a, category_id: {wrong}}}\n")
        with pytest.raises(
            TaxonomyError, match=rf"category_id must be a whole number from 0 up .*, not '?{wrong}"
        ):
            load_list_file(bad)
    bad.write_text("concepts:\n  - {name: 5, hypernyms: plant, category_id: '7'}\n")
    (five,) = load_list_file(bad)  # a number for a name, one hypernym, a quoted id: as meant
    assert (five.name, five.id, five.hypernyms, five.category_id) == ("5", "5", ("plant",), 7)


def test_a_blank_concept_name_in_a_list_file_is_refused(tmp_path):
    path = tmp_path / "concepts.yaml"
    path.write_text('concepts:\n  - name: "   "\n')
    with pytest.raises(TaxonomyError, match=r"concept #1 needs a 'name' \(not blank\)"):
        load_list_file(path)


def test_a_list_files_names_stay_the_text_written(tmp_path):
    """YAML made name: 010 the concept "8", 12:30 "750", and aliases [yes, no] "True" and
    "False", unsaid; a category_id is still a number."""
    path = tmp_path / "list.yaml"
    path.write_text("concepts:\n  - {name: 010, aliases: [yes, 0x1F], category_id: 3}\n  - 12:30\n")
    first, second = load_list_file(path)
    assert (first.name, first.aliases, first.category_id) == ("010", ("yes", "0x1F"), 3)
    assert (second.name, second.category_id) == ("12:30", 2)


def test_a_run_rendered_by_the_old_depth_walk_is_refused_when_resumed(
    tmp_path, capsys, monkeypatch
):
    """augment before the depth fix left delta.n.02 out of polygon.n.01's leaves at depth 3 (its
    parent was met first 3 links down and not walked again 2 down), so the concepts after it had
    ids one lower: a run it began, resumed now, would export its images under other classes."""
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(
        TINY_JOB.replace("source: digits", "source: 'wordnet:polygon.n.01'\n  depth: 3")
        .replace("max_concepts: 3", "leaves: true")
        .replace("images_per_concept: 3", "images_per_concept: 1")
        .replace("OUT_DIR", str(out))
    )
    expand = wordnet.expand_synset

    def expand_before_the_fix(*args, **kwargs) -> list:
        concepts = [c for c in expand(*args, **kwargs) if c.synset != "delta.n.02"]
        return [replace(c, category_id=i) for i, c in enumerate(concepts, start=1)]

    with monkeypatch.context() as patched:
        patched.setattr(wordnet, "expand_synset", expand_before_the_fix)
        # stopped after 8 of its 22 images, as an interrupted run is
        assert cli(capsys, "run", job, "--distributor", "local", "--limit", "8")[0] == 0
    rendered = images_by_item(out)
    code, _, err = cli(capsys, "run", job, "--distributor", "local")
    assert code == 2
    assert error_line(err) == (
        f"error: {out} holds images whose concept has another category id now ('nonagon': 7 "
        "then, 8 now; 2 concepts in all): the taxonomy, or augment's expansion of it, changed "
        "since they were rendered; use another --out, or --force to delete it and start over"
    )
    assert images_by_item(out) == rendered


def test_a_list_file_without_supercategories_shows_its_concepts_under_the_root(tmp_path, capsys):
    """They hung below a blank node ("└── ") between the root and the concepts."""
    from tests.conftest import cli

    (tmp_path / "list.yaml").write_text("concepts: [apple, pear]\n")
    code, out, err = cli(capsys, "taxonomy", "show", tmp_path / "list.yaml")
    assert code == 0, err
    tree = [line for line in out.splitlines() if "──" in line]  # the root's path may wrap
    assert [line.split(" (")[0] for line in tree] == ["├── apple", "└── pear"]


def test_wordnet_errors_say_what_can_be_done():
    """An adjective was told to name "another synset" (none lies below any adjective); an
    exclude past the depth limit, to "check its sense", which was right; exclude=None from
    Python was a bare TypeError."""
    with pytest.raises(TaxonomyError, match="good.a.01 is an adjective or adverb"):
        load_concepts("wordnet:good.a.01")
    with pytest.raises(TaxonomyError, match="lies deeper than depth 1, so it is not among"):
        load_concepts("wordnet:weed.n.01", depth=1, exclude=["stinging_nettle.n.01"])
    assert len(load_concepts("wordnet:weed.n.01", exclude=None)) == 54
    with pytest.raises(TaxonomyError, match=r"exclude: synset ids or concept names \(text\)"):
        load_concepts("wordnet:weed.n.01", exclude=["x.n.01", None])
