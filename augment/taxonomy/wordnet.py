"""Concepts from a WordNet subtree: ``wordnet:weed.n.01``.

WordNet 3.0 comes from Debian's `wordnet-base` (and `wordnet-sense-index`) packages. nltk's
reader is used where ``NLTK_DATA`` (or nltk's default paths) already holds ``corpora/wordnet``;
otherwise `augment` prepares its own copy from Debian's files: copied (nltk refuses symlinks out
of its data folder), plus the ``lexnames`` index that Debian does not ship.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from augment.cache import cache_dir
from augment.errors import TaxonomyError
from augment.taxonomy.concept import Concept

log = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
INSTALL_HINT = (
    "install WordNet 3.0 with `sudo apt-get install wordnet-base wordnet-sense-index` "
    "(make install does it), or set NLTK_DATA to a folder holding corpora/wordnet"
)

#: WordNet's lexicographer files, in file-number order (lexnames(5WN)), with their part of
#: speech (1 noun, 2 verb, 3 adjective, 4 adverb).
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)  # fmt: skip

SYNSET_NAME = re.compile(r"^(?P<lemma>.+)\.(?P<pos>[nvasr])\.(?P<sense>\d+)$")


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{pos}\n" for i, (name, pos) in enumerate(LEXNAMES))


def prepare_wordnet_copy(target: Path, source: Path = DEBIAN_WORDNET) -> Path:
    """Copy Debian's WordNet files into `target` (an nltk corpora/wordnet folder), atomically."""
    if (target / "lexnames").is_file():
        return target
    if not (source / "data.noun").is_file():
        raise TaxonomyError(f"WordNet 3.0 not found (no {source / 'data.noun'}): {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    try:
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)
        (tmp / "lexnames").write_text(lexnames_text())
        tmp.rename(target)
    except OSError:
        if not (target / "lexnames").is_file():  # a concurrent copy may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def wordnet_root():
    """nltk's own WordNet when it has one, else our prepared copy of Debian's files."""
    import nltk

    try:
        return nltk.data.find("corpora/wordnet")
    except LookupError:
        data_dir = cache_dir() / "nltk_data"
        prepare_wordnet_copy(data_dir / "corpora" / "wordnet")
        if str(data_dir) not in nltk.data.path:
            nltk.data.path.append(str(data_dir))  # nltk reads corpora only under its paths
        return nltk.data.find("corpora/wordnet")


@functools.cache
def wordnet():
    """The WordNet reader, loaded once per process (the first load takes seconds)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            """No mapping of synsets from another WordNet version: nltk's reader builds one at
            every load (5.5 s of its 10), from index.sense read twice, for Open Multilingual
            WordNet data, which augment does not read."""
            return None

    try:
        with warnings.catch_warnings():  # "multilingual functions are not available": fine
            warnings.simplefilter("ignore", UserWarning)
            return WordNet30Reader(wordnet_root(), None)
    except OSError as exc:
        raise TaxonomyError(f"WordNet could not be read ({exc}): {INSTALL_HINT}") from None


def lookup_synset(name: str):
    """The synset called `name`, or an error that suggests close, existing names."""
    from nltk.corpus.reader.wordnet import WordNetError

    match = SYNSET_NAME.match(name)
    if not match:
        raise TaxonomyError(
            f"'{name}' is not a synset name: use lemma.pos.NN, e.g. wordnet:weed.n.01"
        )
    wn = wordnet()
    try:
        return wn.synset(name)
    except WordNetError:
        pass
    lemma, pos = match["lemma"], match["pos"]
    close = difflib.get_close_matches(lemma, list(wn.all_lemma_names(pos=pos)), n=3, cutoff=0.6)
    names = [s.name() for word in close for s in wn.synsets(word, pos=pos)]
    suggestions = list(dict.fromkeys(names))[:6]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise TaxonomyError(f"unknown WordNet synset '{name}'{hint}")


#: 'Alternanthera philoxeroides': a binomial among a plant's or animal's lemma names.
BINOMIAL = re.compile(r"^[A-Z][a-z]+ [a-z]+(?:-[a-z]+)*$")  # Capsella bursa-pastoris
#: Where WordNet keeps living things (fungi and algae among the plants): the only synsets whose
#: capitalised two-word names are binomials. Elsewhere they are names: Paris's "French capital",
#: goulash's "Hungarian goulash".
LIVING = ("noun.plant", "noun.animal")


def concept_from_synset(synset, category_id: int, path: tuple[str, ...]) -> Concept:
    lemmas = [lemma.replace("_", " ") for lemma in synset.lemma_names()]
    living = synset.lexname() in LIVING
    binomials = [lemma for lemma in lemmas[1:] if living and BINOMIAL.match(lemma)]
    return Concept(
        id=synset.name(),
        name=lemmas[0],
        category_id=category_id,
        synset=synset.name(),
        definition=synset.definition(),
        hypernyms=path,
        scientific_name=binomials[0] if binomials else "",
        aliases=tuple(lemma for lemma in lemmas[1:] if lemma not in binomials),
        supercategory=path[-1] if path else "",
    )


def hyponyms_of(synset, instances: bool) -> list:
    """The synsets one link below `synset`, by name; with `instances`, its named individuals
    too (city.n.01's Paris): WordNet keeps those apart, as instance hyponyms."""
    children = synset.hyponyms() + (synset.instance_hyponyms() if instances else [])
    return sorted(children, key=lambda s: s.name())


def expand_synset(
    name: str,
    depth: int | None = None,
    leaves: bool = False,
    exclude: tuple[str, ...] = (),
    instances: bool = False,
) -> list[Concept]:
    """The synsets below `name`, as concepts numbered as their tree is shown (a warning when
    more named individuals are left out below it than concepts are kept).

    The walk is depth-first, children by synset name, and follows every hyponym path of at
    most `depth` links, so `depth` keeps every synset at most `depth` links below the root by
    its shortest path, however the walk met it first (1 keeps the direct hyponyms). A synset is
    placed under the parent the walk first met it from (WordNet lets a synset have two): its
    hypernyms are that parent's path and the parent, so per-node results follow the tree
    shown. Concepts are numbered in that tree's order, top to bottom, children by synset name:
    the order the walk meets them when nothing is met again by a shorter path (always so
    without `depth`). `leaves` keeps synsets without hyponyms; `exclude` drops synsets and
    their subtrees; `instances` adds instance hyponyms (named individuals such as cities,
    rivers and people), left out by default as ImageNet leaves them out.
    """
    root = lookup_synset(name)
    excluded = {lookup_synset(e).name() for e in exclude}
    # of the root's paths to entity.n.01 (city.n.01 has two), the shortest, then by name: nltk
    # keeps a synset's hypernyms in a set, and which path came first varied with the process
    root_path = min(
        (tuple(s.name() for s in path) for path in root.hypernym_paths()),
        key=lambda names: (len(names), names),
    )
    found: list[tuple[object, tuple[str, ...]]] = []
    placed: dict[str, tuple[str, ...]] = {}  # each synset's path where the walk first met it
    met: set[str] = set()  # the excluded synsets the walk came to
    # the most links left below each synset when the walk went through it: met again with more
    # left (by a shorter path), its subtree is walked again, deeper
    walked: dict[str, float] = {}
    limit = float("inf") if depth is None else depth

    individuals: dict[str, str] = {}  # the instance hyponyms left out below the synsets walked

    def visit(synset, path: tuple[str, ...], left: float) -> None:
        if not instances:
            individuals.update(named_individuals(synset))
        for child in hyponyms_of(synset, instances):
            if child.name() in excluded:
                met.add(child.name())
                continue
            if child.name() not in placed:
                placed[child.name()] = path
                if not leaves or not hyponyms_of(child, instances):
                    found.append((child, path))
            if left - 1 > walked.get(child.name(), 0):
                walked[child.name()] = left - 1
                # below it, concepts hang from where it was placed: one tree, as shown
                visit(child, (*placed[child.name()], child.name()), left - 1)

    visit(root, root_path, limit)
    missed = sorted(excluded - met)
    deeper = [m for m in missed if depth is not None and below(root, m, instances)]
    if deeper:  # the right sense, past the depth limit: there is nothing to exclude
        raise TaxonomyError(
            f"taxonomy 'wordnet:{root.name()}': exclude '{deeper[0]}' lies deeper than depth "
            f"{depth}, so it is not among the concepts and excludes nothing; remove it from "
            "exclude, or raise depth"
        )
    if missed:  # another sense of the word (griffon.n.01 is the gryphon), or misplaced
        meaning = lookup_synset(missed[0]).definition()
        raise TaxonomyError(
            f"taxonomy 'wordnet:{root.name()}': exclude '{missed[0]}' ({meaning}) is not in its "
            "expansion, so it would exclude nothing; check its sense (augment taxonomy show "
            f"wordnet:{root.name()})"
        )
    if not found and not hyponyms_of(root, instances):
        raise TaxonomyError(no_hyponyms(root, instances))
    if len(individuals) > len(found):  # city.n.01: 3 kinds of city, 911 named ones left out
        log.warning(
            "wordnet:%s: %d named individuals below it (instance hyponyms, such as %s) are left "
            "out, more than the %d concepts kept; set taxonomy.instances: true (augment taxonomy "
            "show --instances) to include them",
            root.name(),
            len(individuals),
            individuals[min(individuals)],
            len(found),
        )
    # numbered as the tree is shown, top to bottom (by path, then name): the order the walk met
    # them, unless a synset met again by a shorter path added concepts higher up the tree
    found.sort(key=lambda entry: (*entry[1], entry[0].name()))
    return [
        concept_from_synset(synset, index, path)
        for index, (synset, path) in enumerate(found, start=1)
    ]


def named_individuals(synset) -> dict[str, str]:
    """Synset name -> name of the named individuals below `synset` that `instances: true` would
    add: its instance hyponyms, and what hangs below them (WordNet files the Potomac as an
    instance of Washington, and Mecca of Riyadh)."""
    found: dict[str, str] = {}
    waiting = list(synset.instance_hyponyms())
    while waiting:
        individual = waiting.pop()
        if individual.name() not in found:
            found[individual.name()] = individual.lemma_names()[0].replace("_", " ")
            waiting.extend([*individual.instance_hyponyms(), *individual.hyponyms()])
    return found


def below(root, name: str, instances: bool) -> bool:
    """Whether synset `name` lies anywhere below `root`, at any depth."""
    waiting, seen = [root], set()
    while waiting:
        synset = waiting.pop()
        for child in hyponyms_of(synset, instances):
            if child.name() == name:
                return True
            if child.name() not in seen:
                seen.add(child.name())
                waiting.append(child)
    return False


def no_hyponyms(root, instances: bool) -> str:
    """Why a synset with nothing below it to walk expands to nothing, and what to do instead:
    widening the walk (depth, leaves, exclude) cannot help there."""
    where = f"taxonomy 'wordnet:{root.name()}' expands to no concepts"
    # by name: nltk's order of instance hyponyms varies from one process to the next
    instances_below = sorted(root.instance_hyponyms(), key=lambda s: s.name())
    named = [s.lemma_names()[0].replace("_", " ") for s in instances_below]
    if named and not instances:
        return (
            f"{where}: its {len(named)} hyponyms are all instances (named individuals such as "
            f"{', '.join(named[:2])}), left out by default; set taxonomy.instances: true "
            "(augment taxonomy show --instances) to include them"
        )
    if root.pos() not in ("n", "v"):  # WordNet orders nouns and verbs only
        return (
            f"{where}: {root.name()} is an adjective or adverb, and WordNet places no synsets "
            "below those; name a noun synset (<word>.n.<sense>)"
        )
    parents = ", ".join(s.name() for s in root.hypernyms()) or "another synset"
    return f"{where}: {root.name()} has no hyponyms; name a more general synset ({parents})"
