"""Run a job end to end: spec -> concepts -> prompts -> plan -> render -> shards -> exports.

Each stage is a plain function of its own module; this module only chains them and keeps the
output folder consistent: the resolved spec is saved first, committed shards are never
rewritten, a rerun skips item_ids already committed, a shard that cannot be read is moved to
OUT/quarantine/ (its items rendered again), and a spec that changed is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from augment.config import SOURCE_MODES, JobSpec, load_spec
from augment.duplicates import Picture, flag_duplicates
from augment.errors import (
    AugmentError,
    ModelError,
    OutputError,
    ShardError,
    SpecError,
    at_least,
    first_line,
    flag,
)
from augment.filters import check_scorer
from augment.finetuning import (
    FinetuneResult,
    class_image_spec,
    read_class_images,
    real_images,
    result_of,
    reusable_adapter,
    settings_for,
    tokens_for,
    train_adapter,
)
from augment.generate.pipelines import check_models, load_tokenizer, read_adapter_card
from augment.labels.autolabel import check_detector
from augment.labels.segment import check_segmenter
from augment.planning import build_interpolation_plan, build_plan, build_source_plan, write_plan
from augment.prompting import (
    DEFAULT_NEGATIVE,
    FIELDS,
    Prompt,
    build_prompts,
    concept_values,
    enforce_token_limit,
    iter_prompts,
    template_slots,
    warn_prompt_gaps,
)
from augment.records import FLAGS, WorkItem
from augment.sinks import (
    check_exports_replaceable,
    export,
    export_settings,
    exporters,
    formats_to_refresh,
    parquet,
    run_categories,
    run_filters,
)
from augment.sinks.animation import write_animations
from augment.sinks.rows import read_manifest, read_saved_spec, saved_spec_remedy
from augment.sources import SourceSet, concept_index
from augment.taxonomy import Concept, spec_concepts
from augment.taxonomy.listfile import slugify

if TYPE_CHECKING:
    from augment.labels.paste import PasteResult

log = logging.getLogger(__name__)

EXPORT_DIRS = (*exporters(), "animations")
#: What `run --force` deletes in OUT (its paste/ goes when the paste starts over).
#: Written in OUT while a filter rewrites its shards, removed once its manifest is saved: a
#: filter stopped half way left some shards with its flags and the rest with the earlier
#: ones (or another scorer's scores), which nothing noticed later.
FILTER_MARK = ".filter-in-progress.json"


RUN_FILES = (
    "shards",
    "quarantine",
    *EXPORT_DIRS,
    "plan.parquet",
    "manifest.json",
    "job.yaml",
    FILTER_MARK,
)
#: What a run writes in OUT: everything else there is left alone.
RUN_WRITES = (*RUN_FILES, "paste")

PACKAGES = ("augment", "torch", "diffusers", "transformers", "pyarrow", "ray")


@dataclass
class RunResult:
    out_dir: Path
    planned: int
    skipped: int
    rendered: int
    flagged: int  # of the images rendered by this call (the whole run's: manifest.json counts)
    failed: int
    seconds: float
    rendering_seconds: float = 0.0  # the first block's start to the last block's commit
    duplicates: int = 0  # images of the whole run (this call's and earlier ones') that repeat
    outputs: dict[str, Path] = field(default_factory=dict)
    #: What failed, as in manifest.json: {"item_id", "error"} or {"source", "error"}.
    failures: list[dict] = field(default_factory=list)


def concepts_for(spec: JobSpec) -> list[Concept]:
    return spec_concepts(spec)


def tokenizer_for(spec: JobSpec):
    """The model's tokenizer, or None (with a warning) when the model is not here."""
    paths, g = spec.paths, spec.generation
    # A single-file checkpoint's tokenizer is in the diffusers folder its configs come from.
    single_file = Path(paths.model).is_file() and paths.config is not None
    location, declared = (paths.config, g.config) if single_file else (paths.model, g.model)
    if Path(paths.model).is_file() and paths.config is None:
        log.warning(
            "prompt lengths not checked: %s is a single-file checkpoint, and its tokenizer is "
            "in the diffusers folder generation.config names, which the spec does not set (a "
            "run needs it too)",
            g.model,
        )
        return None
    try:
        return load_tokenizer(location, declared)
    except ModelError:
        log.warning(
            "prompt lengths not checked: the tokenizer of %s is not on this machine; a run "
            "checks them where the model is",
            declared,
        )
        return None


#: A taxonomy larger than this is said (wordnet:entity.n.01 is 74,373 concepts, without a word).
MANY_CONCEPTS = 10_000
#: The jobs whose prompts `warn_about_prompts` has spoken of in this process: a run plans more
#: than once, and said each warning as often.
SAID: set[int] = set()


def warn_about_prompts(spec: JobSpec, concepts: list[Concept]) -> None:
    """Say, once a process, what the job's prompts will be like: concepts they cannot tell
    apart (`warn_prompt_gaps`), and a taxonomy of very many concepts."""
    p = spec.prompts
    key = hash((spec.taxonomy.source, tuple(c.id for c in concepts), tuple(p.templates)))
    if key in SAID:
        return
    SAID.add(key)
    warn_prompt_gaps(concepts, p.templates)
    if len(concepts) > MANY_CONCEPTS:
        log.warning(
            "taxonomy %s expands to %d concepts, %d images at %d a concept; if that is not "
            "meant, narrow it (taxonomy.depth, leaves, exclude or max_concepts)",
            spec.taxonomy.source,
            len(concepts),
            len(concepts) * p.images_per_concept,
            p.images_per_concept,
        )


def prompts_for(
    spec: JobSpec,
    concepts: list[Concept] | None = None,
    variants: range | None = None,
    check_all: bool = False,
    first: int | None = None,
) -> list[Prompt]:
    """The job's prompts (only `variants` of each concept, when given; only the `first` in
    plan order, a preview's, when given), checked against the model's text encoder length when
    it is here: with `check_all`, the prompts of every variant are checked, not only those
    returned (a plan --limit cut refuses what the whole job would)."""
    if concepts is None:
        concepts = concepts_for(spec)
    p = spec.prompts
    if variants is None:  # the job's own prompts, not a served request's
        warn_about_prompts(spec, concepts)
    job = (
        concepts,
        p.templates,
        p.negative_prompt,
        p.images_per_concept,
        p.attributes,
        p.combine,
        tokens_for(spec, concepts),
    )
    if first is not None:  # built lazily: a preview of a 700,000-prompt job took a minute
        prompts = list(itertools.islice(iter_prompts(*job, variants), first))
    else:
        prompts = build_prompts(*job, variants)
    tokenizer = tokenizer_for(spec)
    if tokenizer is not None:
        limit = min(p.max_tokens, tokenizer.model_max_length)  # a model may read fewer than 77
        among = iter_prompts(*job) if check_all and variants is not None else None
        prompts = enforce_token_limit(prompts, tokenizer, limit, p.on_long_prompt, among)
    return prompts


def limited_variants(spec: JobSpec, per_variant: int) -> range | None:
    """The prompt variants whose items --limit keeps, when they are not all: `limit_plan`
    keeps variant 0 of every concept (or source target) first, then variant 1, and so on, so
    with `per_variant` items each, the first ceil(limit / per_variant) variants hold them. A
    plan of those alone, limited, is the whole plan limited: a limit of 20 over a million
    images per concept plans 20 items, not a million."""
    ipc = spec.prompts.images_per_concept
    if spec.limit is None or per_variant == 0 or spec.limit >= per_variant * ipc:
        return None
    return range(min(ipc, -(-spec.limit // per_variant)))


def plan_for(
    spec: JobSpec,
    concepts: list[Concept] | None = None,
    sources: SourceSet | None = None,
    variants: range | None = None,
    check_all: bool = True,
) -> list[WorkItem]:
    """The work items of a spec, then --limit (`variants`: only those prompt variants of each
    concept, the items a served request asks for). `check_all` False: under a limit, only the
    planned prompts are checked against the text encoder (the job's were already, by an
    earlier plan of this process).

    txt2img: concepts x templates x images_per_concept. Source modes: each source image (or
    box, or class, when inpainting boxes) x images_per_concept prompts of its concept.
    interpolate: images_per_concept sequences per concept, `frames` items each. Under a limit,
    only the variants the kept items use are planned (`limited_variants`), but the prompts of
    every variant are checked; an interpolation plan is built whole (a sequence's end is the
    next variant's prompt, and each is checked against its start).
    """
    if concepts is None:
        concepts = concepts_for(spec)
    g = spec.generation
    cut = variants is None and spec.limit is not None
    check_every = cut and check_all
    if g.mode in SOURCE_MODES:
        sources = sources or SourceSet.of(spec)
        if sources.unreadable:
            first = sources.unreadable[0]
            log.warning(
                "%d source image(s) cannot be read and are left out, first %s (%s)",
                len(sources.unreadable),
                first["source"],
                first["error"],
            )
        targets = sources.targets(concepts, g.mode, g.mask, spec.paths.mask_files)
        if cut:
            variants = limited_variants(spec, len(targets))
        prompts = prompts_for(spec, concepts, variants, check_all=check_every)
        longest = max(g.width, g.height)
        items = build_source_plan(spec.name, spec.seed, prompts, targets, longest)
        if g.watermark:
            check_watermark_fits(items, longest)
    elif g.mode == "interpolate":
        prompts = prompts_for(spec, concepts, variants)
        frames, between = g.interpolate.frames, g.interpolate.between
        items = build_interpolation_plan(spec.name, spec.seed, prompts, frames, between)
    else:
        if cut:
            variants = limited_variants(spec, len(concepts))
        prompts = prompts_for(spec, concepts, variants, check_all=check_every)
        items = build_plan(spec.name, spec.seed, prompts)
    return limit_plan(items, spec.limit)


def check_watermark_fits(items: list[WorkItem], longest: int) -> None:
    """Refuse, before any render, source images whose renders (their aspect kept) would be too
    narrow for the invisible watermark's blocks (txt2img sizes are checked with the spec)."""
    from augment.provenance import WATERMARK_MIN_SIZE

    narrow = [item for item in items if min(item.width, item.height) < WATERMARK_MIN_SIZE]
    if narrow:
        first = narrow[0]
        raise SpecError(
            f"generation.watermark: {len(narrow)} render(s) of source images would be narrower "
            f"than {WATERMARK_MIN_SIZE} px, first {first.source_image_id} at {first.width}x"
            f"{first.height} (its aspect kept, longer side {longest}); raise height and width, "
            "leave such images out of the source, or drop watermark"
        )


def limit_plan(items: list[WorkItem], limit: int | None) -> list[WorkItem]:
    """Keep `limit` items spread over concepts (variant 0 of each first), in plan order."""
    if limit is None or limit >= len(items):
        return items
    ranked = sorted(range(len(items)), key=lambda i: (items[i].variant, i))
    keep = set(ranked[:limit])
    return [item for i, item in enumerate(items) if i in keep]


def categories_for(concepts: list[Concept]) -> list[dict]:
    return [
        {
            "id": c.category_id,
            "name": c.name,
            "supercategory": c.supercategory or "concept",
            "synset": c.synset,
            "concept_id": c.id,
        }
        for c in concepts
    ]


def saved_run_spec(out_dir: Path, overrides: dict | None = None) -> JobSpec:
    """The spec a finished run was rendered with, `overrides` applied, its relative file names
    found where the run found them (the manifest's `job_dir`)."""
    previous = saved_job_spec(out_dir).model_dump(mode="json")  # a damaged one is named here
    job_dir = read_manifest(out_dir).get("job_dir")
    base_dir = Path(job_dir) if job_dir else None
    return load_spec(previous, overrides or {}, base_dir, f"{out_dir}/job.yaml")


def saved_job_spec(out_dir: Path) -> JobSpec:
    """OUT/job.yaml as a spec, or an error that says how to repair it."""
    try:
        return JobSpec.model_validate(read_saved_spec(out_dir))
    except ValueError as exc:  # pydantic's ValidationError: a hand-edited job.yaml
        raise OutputError(
            f"{out_dir / 'job.yaml'} is not a valid spec ({first_line(exc)}): it is the spec "
            f"{out_dir} was rendered with; {saved_spec_remedy(out_dir)}"
        ) from None


def spec_differences(out_dir: Path, spec: JobSpec, most: int = 3) -> list[str]:
    """The settings in which `spec` differs from OUT's saved one ("generation.seed: 7 then, 8
    now"), at most `most` and a count of the rest; none where there is no job.yaml to read."""
    if not (out_dir / "job.yaml").is_file():
        return []
    then, now = flatten(saved_job_spec(out_dir).identity()), flatten(spec.identity())
    keys = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    shown = [f"{k} {json.dumps(then.get(k))} then, {json.dumps(now.get(k))} now" for k in keys]
    rest = len(shown) - most
    return shown[:most] + ([f"{rest} more"] if rest > 0 else [])


def spec_change(out_dir: Path, spec: JobSpec, previous: str, now: str) -> str:
    """How `spec` (hash `now`) differs from the one OUT was made with (hash `previous`), for a
    refusal: "hash a, now b: generation.seed 7 then, 8 now"."""
    differences = spec_differences(out_dir, spec)
    return f"hash {previous}, now {now}" + (f": {', '.join(differences)}" if differences else "")


def flatten(data: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def previous_spec_hash(out_dir: Path) -> str | None:
    """The spec hash of the run OUT holds: its job.yaml's, else its manifest's; None for a
    folder that holds no run."""
    # read even when job.yaml decides: a damaged manifest is named before any rendering, not
    # when the run's end writes the new one over it
    manifest = read_manifest(out_dir) if (out_dir / "manifest.json").is_file() else {}
    if (out_dir / "job.yaml").is_file():
        return saved_job_spec(out_dir).spec_hash()
    return manifest.get("spec_hash")


def concept_texts(spec: JobSpec, concepts: list[Concept]) -> dict[str, str]:
    """Each concept's id -> a hash of the fields its prompts read (a list file's name or
    definition, say): an edit of those changes its prompts, and the spec's hash does not."""
    used = sorted({s for t in spec.prompts.templates for s in template_slots(t)} & set(FIELDS))
    texts = {}
    for concept in concepts:
        values = concept_values(concept)
        content = json.dumps({field: values.get(field) for field in used}, sort_keys=True)
        texts[concept.id] = hashlib.sha256(content.encode()).hexdigest()[:16]
    return texts


def check_committed_concepts(
    out_dir: Path,
    concepts: list[Concept],
    texts: dict[str, str] | None = None,
    remedy: str = "use another --out, or --force to delete them and start over",
) -> None:
    """The images OUT already holds keep their concept's category and prompts: a taxonomy
    edited since they were rendered (a list file reordered, a concept removed or described
    anew), or expanded otherwise by a newer augment (a WordNet depth that now reaches more
    synsets), leaves the spec's hash as it was, and would put them under other classes in every
    export, or keep renders of the old prompts beside the new ones."""
    categories = {c.id: c.category_id for c in concepts}
    finished = texts and (out_dir / "manifest.json").is_file()  # an interrupted run has none
    before = read_manifest(out_dir).get("concept_texts", {}) if finished else {}
    reworded = {
        concept_id for concept_id, text in before.items() if texts.get(concept_id, text) != text
    }
    moved: dict[str, tuple[int, int]] = {}
    gone: set[str] = set()
    changed: set[str] = set()
    for path in parquet.shard_paths(out_dir / "shards"):
        try:
            table = parquet.read_shard(path, ["concept_id", "concept_name", "category_id"])
        except ShardError:  # quarantined and rendered again by resume_point
            continue
        for row in table.to_pylist():
            now = categories.get(row["concept_id"])
            if now is None:
                gone.add(row["concept_name"])
            elif now != row["category_id"]:
                moved[row["concept_name"]] = (row["category_id"], now)
            elif row["concept_id"] in reworded:
                changed.add(row["concept_name"])
    if gone:
        raise OutputError(
            f"{out_dir} holds images of concepts the taxonomy no longer has "
            f"({', '.join(sorted(gone)[:3])}): it, or augment's expansion of it, changed since "
            f"they were rendered; {remedy}"
        )
    if changed:
        raise OutputError(
            f"{out_dir} holds images of concepts whose prompts' text changed since they were "
            f"rendered ({', '.join(sorted(changed)[:3])}: a name or field the templates read); "
            f"their old prompts would stay beside the new ones; {remedy}"
        )
    if moved:
        name, (then, now) = next(iter(moved.items()))
        raise OutputError(
            f"{out_dir} holds images whose concept has another category id now ('{name}': "
            f"{then} then, {now} now; {len(moved)} concepts in all): the taxonomy, or augment's "
            f"expansion of it, changed since they were rendered; {remedy}"
        )


def check_committed_prompts(
    out_dir: Path,
    spec: JobSpec,
    concepts: list[Concept],
    planned: list[WorkItem],
    done: set[str],
) -> None:
    """The images OUT already holds were rendered from the prompts this spec gives their concept
    and variant now. The spec's hash cannot see a change in how augment words them (the order
    of combine: exhaustive, the truncation of long prompts, in a newer version): the old
    images would stay beside renders of the new prompts, each such variant twice."""
    # the last run's plan, written before its first image
    saved = saved_plan(out_dir, ["item_id", "concept_id", "variant", "prompt"]) if done else None
    if saved is None:
        return
    rows = saved.to_pylist()
    then = {(r["concept_id"], r["variant"]): r["prompt"] for r in rows if r["item_id"] in done}
    now = {(item.concept_id, item.variant): item.prompt for item in planned}
    unplanned = [key for key in then if key not in now]
    if unplanned:  # a limited run plans fewer variants than OUT holds
        ids = {concept_id for concept_id, _ in unplanned}
        low, high = min(v for _, v in unplanned), max(v for _, v in unplanned)
        wanted = [c for c in concepts if c.id in ids]
        for prompt in prompts_for(spec, wanted, range(low, high + 1)):
            now.setdefault((prompt.concept.id, prompt.variant), prompt.text)
    changed = [key for key, text in then.items() if now.get(key, text) != text]
    if changed:
        key = changed[0]
        name = next((c.name for c in concepts if c.id == key[0]), key[0])
        raise OutputError(
            f"{out_dir} holds {len(changed)} image(s) whose prompt this version of augment "
            f"words otherwise (e.g. {name}, variant {key[1]}: {then[key]!r} then, {now[key]!r} "
            "now: the order of combine: exhaustive or the truncation of long prompts changed); "
            "use another --out, or --force to delete them and start over"
        )


def check_committed_records(out_dir: Path, spec: JobSpec, planned: list[WorkItem]) -> None:
    """Every image OUT's shards hold is an item of this job's plan, rendered once, with its
    seed and this spec's steps. A shard copied in from another run was taken as done: another
    job's images went into the exports, and one of a job that shares this one's item ids
    (another step count) stood twice beside this job's own, both then flagged duplicates.
    An item committed twice in the same settings is one image twice, and the later copy goes
    (`drop_repeats`)."""
    by_id = {item.item_id: item for item in planned}
    steps = spec.generation.num_inference_steps
    seen: dict[str, tuple[Path, tuple]] = {}
    repeats: dict[Path, list[int]] = {}  # a shard's rows that repeat an earlier shard's
    whole = spec.limit is None  # a limited run's plan: widened to the job's when it must be
    for path in parquet.shard_paths(out_dir / "shards"):
        try:
            rows = parquet.read_shard(path, [*REPEAT_KEY, "mode"]).to_pylist()
        except ShardError:  # quarantined by resume_point already, or named by it
            continue
        for index, row in enumerate(rows):
            if row["item_id"] not in by_id and not whole:  # served by `serve --write`, say
                everything = plan_for(spec.model_copy(update={"limit": None}), check_all=False)
                by_id.update((item.item_id, item) for item in everything)
                whole = True
            item_id, item = row["item_id"], by_id.get(row["item_id"])
            key = tuple(row[column] for column in REPEAT_KEY)
            if item is None:
                why = f"item {item_id} is not in this job's plan"
            elif row["seed"] != item.seed:
                why = f"item {item_id} has seed {row['seed']}, this job's plan {item.seed}"
            elif row["mode"] != "paste" and row["steps"] not in (None, steps):
                why = f"item {item_id} was rendered in {row['steps']} steps, this spec in {steps}"
            elif item_id in seen and seen[item_id][1] != key:
                why = f"item {item_id} is also in {seen[item_id][0].name}, in other settings"
            else:
                if item_id in seen:
                    repeats.setdefault(path, []).append(index)
                else:
                    seen[item_id] = (path, key)
                continue
            raise OutputError(
                f"shard {path} holds images of another run ({why}): it was copied or left "
                f"there from elsewhere; move it out of {out_dir / 'shards'}, or start over "
                "with --force"
            )
    for path, rows in repeats.items():
        drop_repeats(path, rows)


#: What makes two commits of an item the same image: a render is a function of these.
REPEAT_KEY = ("item_id", "seed", "steps", "settings", "model_hash")


def drop_repeats(path: Path, rows: list[int]) -> None:
    """Remove a shard's rows that repeat images committed in an earlier shard (the shard
    itself when nothing else is left). A worker of a stopped run can commit its block a moment
    after its driver died, after the next run has looked and rendered that block again."""
    table = parquet.read_shard(path)
    keep = sorted(set(range(table.num_rows)) - set(rows))
    log.warning(
        "shard %s repeats %d image(s) committed in another shard (a worker of a stopped run "
        "committing its block late): %s",
        path,
        len(rows),
        "removed them" if keep else "removed it",
    )
    if keep:
        parquet.write_table(path.parent, path.name, table.take(keep))
    else:
        path.unlink()


#: The lock file in OUT: one process writes a folder at a time.
LOCK_FILE = ".augment.lock"
#: The output folders this process holds the lock of (a filter run inside a run takes none).
HELD_LOCKS: dict[Path, object] = {}


def lock_output(out_dir: Path, option: str = "--out") -> Callable[[], None]:
    """Take OUT's lock for this process, or refuse when another process holds it: a second
    run (above all one with --force) or filter into a folder a run is writing mixed two runs'
    shards. Returns what releases it (the lock also ends with the process)."""
    import fcntl

    key = out_dir.resolve()
    if key in HELD_LOCKS:
        return lambda: None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held until released
    except OSError as exc:
        fix = f"choose another with {option}" if option else "give write access to it"
        raise not_writable(out_dir, exc, fix) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise locked(out_dir, holder, option) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {platform.node()}")
    handle.flush()
    HELD_LOCKS[key] = handle

    def release() -> None:
        held = HELD_LOCKS.pop(key, None)
        if held is not None:
            held.close()

    return release


def check_unlocked(out_dir: Path, option: str = "--out") -> None:
    """OUT is not being written by another process, found without making OUT or its lock file:
    a check before a step that takes the lock later (serve --write, once its replicas start)."""
    import fcntl

    lock = out_dir / LOCK_FILE
    if out_dir.resolve() in HELD_LOCKS or not lock.is_file():
        return
    try:
        handle = open(lock)  # noqa: SIM115 - closed below, which releases the probe's lock
    except OSError as exc:
        raise not_writable(out_dir, exc, f"choose another with {option}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise locked(out_dir, handle.read().strip(), option) from None


def locked(out_dir: Path, holder: str, option: str) -> OutputError:
    """The refusal of a folder another process writes (`holder`: what its lock file says)."""
    return OutputError(
        f"{out_dir} is being written by another augment process ({holder or 'another process'}); "
        f"wait for it to end{', or choose another ' + option if option else ''}"
    )


#: What a refused output folder's message advises (`augment serve --write` has its own).
RUN_REMEDY = "use another --out, or --force to delete it and start over"


def prepare_output(
    out_dir: Path,
    spec: JobSpec,
    force: bool,
    concepts: list[Concept] | None = None,
    remedy: str = RUN_REMEDY,
    option: str = "--out",
) -> Callable[[], None]:
    """Create OUT, or check that it holds a run of this same spec, whose images have the
    categories `concepts` give them (then it resumes); a refusal ends with `remedy`, a folder
    that cannot be written names `option`, the command's own for OUT. OUT is locked for this
    process until the returned function is called."""
    check_output_names(out_dir, spec, option)
    release = lock_output(out_dir, option)  # before anything is cleared or written
    try:
        start_or_resume(out_dir, spec, force, concepts, remedy, option)
    except BaseException:
        release()
        raise
    return release


def check_output_names(out_dir: Path, spec: JobSpec, option: str = "--out") -> None:
    """The names a run writes in OUT are its own to write: not the job file itself, not a file
    where it makes a folder (or the other way round), not the user's job.yaml or exports."""
    try:  # a name in another encoding (Latin-1 'caf\xe9') reaches Python as a surrogate
        str(out_dir).encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(
            f"{option}: {os.fsencode(out_dir)!r} is not a UTF-8 name, and the Parquet writer "
            "cannot write there; rename it, or choose a path of UTF-8 characters"
        ) from None
    saved = out_dir / "job.yaml"  # where the resolved spec is written
    if spec.job_file is not None and saved.resolve() == spec.job_file.resolve():
        raise OutputError(
            f"{spec.job_file} is the output folder's job.yaml, where a run writes its resolved "
            "spec: rename the job file, or set another output.dir (or --out)"
        )
    from augment.gallery import check_gallery_replaceable

    check_run_layout(out_dir)
    check_no_foreign_files(out_dir, option)
    check_exports_replaceable(out_dir, formats_to_refresh(out_dir, spec.output.formats))
    check_gallery_replaceable(out_dir)  # a run writes an `augment view` gallery again


def check_resumable(
    out_dir: Path, spec: JobSpec, concepts: list[Concept] | None, remedy: str
) -> bool:
    """OUT holds nothing, or a run this spec resumes (its concepts' images the same); True when
    it holds another spec's run that made no image, which this one replaces. Reads only."""
    previous, now = previous_spec_hash(out_dir), spec.spec_hash()
    if previous is None and holds_images(out_dir):
        raise OutputError(
            f"{out_dir} holds images but neither the job.yaml nor the manifest.json that "
            f"say which spec made them: put job.yaml back, or {remedy}"
        )
    replace = False
    if previous is not None and previous != now:
        if not failed_before_its_first_image(out_dir):
            raise OutputError(
                f"{out_dir} holds a run of a different spec "
                f"({spec_change(out_dir, spec, previous, now)}); {remedy}"
            )
        replace = True
    if concepts is not None and not replace:
        check_committed_concepts(out_dir, concepts, concept_texts(spec, concepts), remedy)
    return replace


def start_or_resume(
    out_dir: Path,
    spec: JobSpec,
    force: bool,
    concepts: list[Concept] | None,
    remedy: str,
    option: str,
) -> None:
    """OUT made ready for this spec's run: a run of it resumes, --force clears one, another
    spec's is refused; then its job.yaml is written."""
    saved = out_dir / "job.yaml"
    kept = spec
    if not force:
        if check_resumable(out_dir, spec, concepts, remedy):
            # a model that would not load: the corrected spec takes its place, nothing is lost
            log.warning("%s holds a run of another spec that made no image: starting over", out_dir)
            clear_run(out_dir)
        else:
            kept = spec.model_copy(update={"limit": widest_limit(out_dir, spec.limit)})
    else:
        clear_run(out_dir)
    try:
        (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise not_writable(out_dir, exc, f"choose another with {option}") from None
    check_writable(out_dir, f"choose another with {option}")
    saved.write_text(kept.to_yaml())


def widest_limit(out_dir: Path, limit: int | None) -> int | None:
    """The limit OUT/job.yaml keeps when a run resumes: the larger of the last run's and this
    one's (None, the whole job, is larger than any), so the file says what the folder may hold,
    not only what the last command asked for (a `--limit 10` after a whole run left it saying
    10 beside 3,400 images)."""
    if not (out_dir / "job.yaml").is_file():  # a new folder
        return limit
    then = read_saved_spec(out_dir).get("limit")
    if then is None or limit is None:
        return None
    return max(then, limit) if isinstance(then, int) else limit


def check_writable(folder: Path, remedy: str) -> None:
    """A file can be made in `folder`: checked before a step changes anything there."""
    try:
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise not_writable(folder, exc, remedy) from None


def not_writable(folder: Path, exc: OSError, remedy: str) -> OutputError:
    """The one message of an output folder that cannot be written, whichever step found it.
    One that holds a run is given write access back: another folder would start it over."""
    if remedy.startswith("choose another") and any(parquet.shard_paths(folder / "shards")):
        remedy = f"give write access to it to resume the run it holds (or {remedy}, starting over)"
    return OutputError(f"output folder {folder} is not writable ({exc.strerror}); {remedy}")


def check_run_layout(out_dir: Path) -> None:
    """The names a run writes are free for it: a folder where it writes a file (or the other
    way round) would fail only once the images are rendered."""
    for name, folder in (
        ("shards", True),
        ("job.yaml", False),
        ("plan.parquet", False),
        ("manifest.json", False),
    ):
        target = out_dir / name
        if target.exists() and target.is_dir() != folder:
            kind, wanted = ("a file", "folder") if folder else ("a folder", "file")
            raise OutputError(
                f"{target} is {kind}, where a run writes its {name} {wanted}: move it away, or "
                "choose another --out"
            )


def holds_run(out_dir: Path) -> bool:
    """Whether OUT holds a run: its shards/ folder (made before anything else a run writes
    there) or its plan."""
    return (out_dir / "shards").is_dir() or (out_dir / "plan.parquet").is_file()


def check_no_foreign_files(out_dir: Path, option: str = "--out") -> None:
    """A job.yaml, manifest.json or export folder (coco/, yolo/, ...) in an OUT that holds no
    run is the user's own (a job file, a real COCO set): the run, or --force, would replace
    it."""
    if holds_run(out_dir):
        return
    writes = {"job.yaml": "its resolved spec", "manifest.json": "its manifest"}
    writes.update({name: f"its {name} export" for name in EXPORT_DIRS})
    for name, what in writes.items():
        if (out_dir / name).exists():
            raise OutputError(
                f"{out_dir / name} was not written by augment ({out_dir} holds no run: no "
                f"shards/ or plan.parquet), and a run writes {what} there: move it away, or "
                f"choose another {option}"
            )


def check_inputs_outside_output(spec: JobSpec, out_dir: Path) -> None:
    """The images a job reads are not among what its run writes in OUT: --force would delete
    them before they are read, and an export is rewritten under its reader."""
    out = out_dir.resolve()
    inputs = {
        "source.path": spec.paths.source,
        "paste.backgrounds.path": spec.paths.backgrounds,
        "finetune.source.path": spec.paths.finetune_source,
    }
    for key, value in inputs.items():
        if not value:
            continue
        path = Path(value).resolve()
        inside = [name for name in RUN_WRITES if path == out / name or out / name in path.parents]
        if path == out or inside:
            what = f"its {inside[0]}" if inside else "it whole"
            raise SpecError(
                f"{key}: {value} is in the output folder {out_dir}, and the run writes {what} "
                "(--force deletes it first): copy the images elsewhere, or choose another --out"
            )


def holds_images(out_dir: Path) -> bool:
    """Whether OUT holds a committed or quarantined shard: work a new spec must not delete."""
    quarantined = (out_dir / "quarantine").glob("*.parquet")
    return bool(parquet.shard_paths(out_dir / "shards")) or any(True for _ in quarantined)


def failed_before_its_first_image(out_dir: Path) -> bool:
    """Whether OUT holds only what a run writes before it renders (its spec, its plan, an empty
    shards/): a run stopped by a model that would not load, which a new spec may replace.
    Anything more (images, exports, a manifest, files of the user's) is kept."""
    made_first = {"job.yaml", "plan.parquet", "shards", LOCK_FILE}
    names = {path.name for path in out_dir.iterdir()}
    shards = out_dir / "shards"
    return (
        "plan.parquet" in names
        and names <= made_first
        and (not shards.is_dir() or not any(shards.iterdir()))
    )


def clear_run(out_dir: Path) -> None:
    """Delete the run OUT holds (its shards, exports, plan, manifest and spec)."""
    for name in RUN_FILES:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_identity(spec: JobSpec) -> dict:
    """The model every image came from: its name, content hash and licence (provenance)."""
    from dataclasses import asdict

    from augment.generate.engine import run_provenance

    shared = run_provenance(spec)
    return {
        "name": shared.model,
        "hash": shared.model_hash,
        "license": shared.license,
        "adapters": [asdict(adapter) for adapter in shared.adapters],
    }


def duplicates_checked(out_dir: Path) -> bool:
    """Whether OUT's shards are as the last duplicate pass left them (the manifest's
    `duplicates_checked`): a resume with nothing to render compared 100,000 images again."""
    try:
        checked = read_manifest(out_dir).get("duplicates_checked")
    except OutputError:  # none yet, or damaged: the pass runs, and the manifest is written anew
        return False
    return checked == parquet.shards_fingerprint(out_dir / "shards")


def write_manifest(
    out_dir: Path,
    spec: JobSpec,
    concepts: list[Concept],
    items: list[WorkItem],
    seconds: float,
    failures: list[dict],
    rendering_seconds: float = 0.0,
) -> Path:
    """manifest.json: what is in OUT, written last (it marks a finished run). `failures` are
    items that failed to render and source images that could not be read."""
    shards_dir = out_dir / "shards"
    shards = [
        {"file": p.name, "rows": parquet.pq.ParquetFile(p).metadata.num_rows}
        for p in parquet.shard_paths(shards_dir)
    ]
    _, flags = parquet.count_true(shards_dir, [*FLAGS, "float32_retry"])
    manifest = {
        "job": spec.name,
        "spec_hash": spec.spec_hash(),
        # where the spec's relative file names are found (`augment filter` loads OUT/job.yaml)
        "job_dir": str(spec._base_dir or Path.cwd()),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {
            "planned": len(items),
            "records": sum(s["rows"] for s in shards),
            "missing": len({i.item_id for i in items} - parquet.committed_item_ids(shards_dir)),
            "failed": len(failures),
            **flags,
        },
        "timings": {"last_run_s": round(seconds, 3), "rendering_s": round(rendering_seconds, 3)},
        "versions": package_versions(),
        "model": model_identity(spec),
        "shards": shards,
        "quarantined": sorted(p.name for p in (out_dir / "quarantine").glob("*.parquet")),
        "categories": categories_for(concepts),
        "concept_texts": concept_texts(spec, concepts),
        "failures": failures,
    }
    manifest["duplicates_checked"] = parquet.shards_fingerprint(shards_dir)  # the pass ran
    previous = out_dir / "manifest.json"
    if previous.is_file():  # `augment filter`'s settings and history outlive a resumed run
        earlier = read_manifest(out_dir)
        manifest.update({k: earlier[k] for k in ("filters", "filter_history") if k in earlier})
    card = read_adapter_card(spec.paths.finetuned) if spec.paths.finetuned else None
    if card is not None:
        manifest["finetune"] = {
            "folder": spec.paths.finetuned,
            "method": card["method"],
            "steps": card["steps"],
            "tokens": {c["id"]: c["token"] for c in card["concepts"]},
        }
    return save_manifest(out_dir, manifest)


def save_manifest(out_dir: Path, manifest: dict) -> Path:
    """Write OUT/manifest.json atomically: a temporary file renamed into place."""
    path, tmp = out_dir / "manifest.json", out_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return path


@dataclass
class RunOptions:
    """How to run, not what to make: none of these change an image."""

    distributor: str = "ray"  # "ray" or "local"
    workers: int | None = None  # CPU workers (default: every CPU); on GPUs, at most one per GPU
    address: str | None = None  # an existing Ray cluster; default: RAY_ADDRESS, else local
    retries: int = 2  # attempts per failed item before it is reported
    force: bool = False  # delete a previous run in OUT and start over

    def __post_init__(self) -> None:
        if self.distributor not in ("ray", "local"):
            raise AugmentError(f"distributor must be 'ray' or 'local', got {self.distributor!r}")
        if self.workers is not None:
            at_least("workers", self.workers, 1, " (leave it out to use every CPU)")
        at_least("retries", self.retries, 0)
        flag("force", self.force)  # "false" would count as true, and delete the run


@dataclass
class Rendering:
    rendered: int
    flagged: int
    failures: list[dict]
    seconds: float  # from the first block's start to the last block's commit
    shards: tuple[str, ...] = ()  # the names of the shards its blocks commit


def render_blocks(
    spec: JobSpec,
    concepts: list[Concept],
    items: list[WorkItem],
    done: set[str],
    out_dir: Path,
    options: RunOptions,
) -> Rendering:
    """Render the plan items not in `done`."""
    from augment.distribute import DISTRIBUTORS, block_size, make_blocks
    from augment.generate.engine import AUTO_CPU_BATCH
    from augment.progress import image_progress

    shards_dir = out_dir / "shards"
    batch = spec.generation.batch_size
    nominal = batch if isinstance(batch, int) else AUTO_CPU_BATCH  # auto: workers split blocks
    size = block_size(len(items), nominal, spec.output.rows_per_shard)
    blocks = make_blocks(items, done, size, parquet.next_shard_index(shards_dir))
    if not blocks:  # all done: no worker to start (nor a local Ray)
        return Rendering(0, 0, [], 0.0)
    names = tuple(block.shard for block in blocks)
    worker_kwargs = {
        "spec": spec,
        "concepts": [concept.name for concept in concepts],
        "shards_dir": shards_dir,
        "retries": options.retries,
    }
    totals = {"rendered": 0, "flagged": 0}
    span = [math.inf, -math.inf]  # the first block's start, the last block's commit
    failures: list[dict] = []
    with image_progress(sum(len(b.items) for b in blocks), "rendering") as advance:

        def on_result(block, result) -> None:
            totals["rendered"] += result.rendered
            totals["flagged"] += result.flagged
            failures.extend(result.failures)
            span[:] = min(span[0], result.started_at), max(span[1], time.time())
            advance(len(block.items))

        DISTRIBUTORS[options.distributor](
            blocks,
            worker_kwargs,
            on_result,
            workers=options.workers,
            address=options.address,
        )
    rendering = max(0.0, span[1] - span[0])
    return Rendering(totals["rendered"], totals["flagged"], failures, rendering, names)


#: Modes whose render may copy its source image: a render that repeats its source is flagged
#: a duplicate of it. (An inpainted image keeps its source outside the mask by design.)
COPYING_MODES = ("img2img",)


def source_pictures(
    spec: JobSpec, items: list[WorkItem], sources: SourceSet | None
) -> list[Picture]:
    """The source images a run's renders may repeat, each under its items' concepts."""
    if sources is None or spec.generation.mode not in COPYING_MODES:
        return []
    pairs = dict.fromkeys(
        (item.source_image_id, slugify(item.concept_name), item.concept_id)
        for item in items
        if item.source_image_id
    )
    pictures = []
    for source_id, concept, concept_id in pairs:
        try:
            pictures.append(Picture.of(source_id, concept, sources.pixels(source_id), concept_id))
        except SpecError:  # unreadable: already reported, and nothing rendered from it
            continue
    return pictures


def resume_point(out_dir: Path, made: str = "rendered") -> set[str]:
    """The item_ids already committed; damaged shards go to OUT/quarantine/ first, so their
    items are `made` again (named in the log here and in the manifest)."""
    done, damaged = parquet.check_shards(out_dir / "shards")
    for shard, moved in zip(damaged, parquet.quarantine(out_dir, list(damaged)), strict=True):
        log.warning(
            "shard %s cannot be read (%s): moved to %s; its items are %s again",
            shard,
            damaged[shard],
            moved,
            made,
        )
    return done


def check_sources_kept(out_dir: Path, planned: list[WorkItem]) -> None:
    """A resumed run from source images must still have each image OUT rendered, under the
    label it was rendered as. A source image removed, or moved to another class folder, left
    its renders in the shards and exports under the old label, without a word."""
    now = {(item.source_image_id, item.concept_id) for item in planned}
    gone = Counter(
        (row["source_image_id"], row["concept_id"])
        for row in parquet.read_records(out_dir / "shards", ["source_image_id", "concept_id"])
        if row["source_image_id"] is not None
        and (row["source_image_id"], row["concept_id"]) not in now
    )
    if gone:
        image, concept = min(gone)
        raise SpecError(
            f"{out_dir} holds {gone.total()} images rendered from source images that "
            f"source.path no longer has under that label (e.g. {image}, rendered as {concept}): "
            "the source changed since this run began. Put those images back, or start over "
            "with --force (or give another --out)"
        )


def check_same_weights(out_dir: Path, spec: JobSpec) -> None:
    """A resumed run renders with the weights OUT's images came from. The spec names files, so
    a model or adapter changed in place since (trained again, downloaded again) leaves its hash
    as it was and would put two models' images under one spec: refused, naming which changed.
    The last committed image says what it was made with (its PNG's provenance), so a run
    stopped before its manifest was written is checked too."""
    from augment.generate.engine import run_provenance

    then = committed_provenance(out_dir)
    if then is None:
        return
    now = run_provenance(spec)
    changed = []
    if then.get("model_hash") and now.model_hash and then["model_hash"] != now.model_hash:
        model, old = spec.generation.model, then["model_hash"]
        changed.append(f"generation.model {model} ({old[:12]} then, now {now.model_hash[:12]})")
    before = {(a["kind"], a["name"]): a["hash"] for a in then.get("adapters", [])}
    for adapter in now.adapters:
        old = before.get((adapter.kind, adapter.name))
        if old and adapter.hash and old != adapter.hash:
            kind = adapter.kind.replace("_", " ")
            changed.append(f"the {kind} {adapter.name} ({old[:12]} then, now {adapter.hash[:12]})")
    if changed:
        raise OutputError(
            f"{out_dir} holds images rendered with other weights: the files of "
            f"{'; '.join(changed)} changed since; put the old files back to resume, or use "
            "another --out, or --force to delete these images and start over"
        )


def committed_provenance(out_dir: Path) -> dict | None:
    """What the last committed image was made with (model and adapter hashes): its PNG's
    `augment` chunk; None when OUT holds no image (or one without the chunk)."""
    from augment.provenance import AUGMENT_KEY, read_png_chunks

    shards = parquet.shard_paths(out_dir / "shards")
    if not shards:
        return None
    images = parquet.read_shard(shards[-1], ["image"]).column("image").to_pylist()
    if not images or not images[0] or not images[0].get("bytes"):
        return None
    text = read_png_chunks(images[0]["bytes"]).get(AUGMENT_KEY)
    return json.loads(text) if text else None


def warn_token_unused(spec: JobSpec) -> None:
    """Say when the concepts were learnt under {token} but no template renders it: a LoRA or
    DreamBooth still changes the weights every prompt goes through, so the renders do change
    (the spec refuses the textual inversion case, which would change none), but the identifier
    the concept was taught as is never said."""
    f = spec.finetune
    learnt = "token" in template_slots(f.instance_prompt)
    if learnt and not any("token" in template_slots(t) for t in spec.prompts.templates):
        log.warning(
            "finetune: the %s learns each concept as {token} (finetune.instance_prompt %r), but "
            "no template of prompts.templates names {token}: the renders use the tuned weights "
            "without the word they were taught; put {token} in a template ('a photo of {token} "
            "{name}'), or take it out of the instance prompt",
            f.method,
            f.instance_prompt,
        )


def check_taught_tokens(spec: JobSpec) -> None:
    """A `generation.textual_inversions` token is none of those `finetune:` teaches: checked
    before the fine-tune trains. It failed when the pipeline loaded, blaming finetune: (after a
    warning that the token was in no template, which {token} says); with a LoRA, the embedding
    replaced the learnt identifier without a word."""
    if spec.finetune is None or not spec.generation.textual_inversions:
        return
    from augment.finetuning.data import tokens_for

    taught = {token: concept for concept, token in tokens_for(spec, concepts_for(spec)).items()}
    for number, inversion in enumerate(spec.generation.textual_inversions):
        if inversion.token in taught:
            raise SpecError(
                f"generation.textual_inversions[{number}].token {inversion.token!r} is also "
                f"the token finetune: teaches concept {taught[inversion.token]!r}: one would "
                "replace the other's embedding; give one of them another token"
            )


def warn_inversion_tokens(spec: JobSpec) -> None:
    """Say when a `generation.textual_inversions` token changes no image (no template, negative
    prompt or attribute says it), or is a word the tokenizer already knows (every "digit" in
    the prompts became the embedding): both rendered without a word of warning."""
    p = spec.prompts
    texts = [
        *p.templates,
        p.negative_prompt,
        *(v for vs in (p.attributes or {}).values() for v in vs),
    ]
    inversions = spec.generation.textual_inversions
    tokenizer = tokenizer_for(spec) if inversions else None  # once: it loads from disk
    vocabulary = tokenizer.get_vocab() if tokenizer is not None else {}
    for number, inversion in enumerate(inversions):
        key = f"generation.textual_inversions[{number}].token"
        if not any(inversion.token in text for text in texts):
            log.warning(
                "%s %r is in no template, negative prompt or attribute: the embedding changes no "
                "image; put it in a template ('a photo of %s {name}')",
                key,
                inversion.token,
                inversion.token,
            )
        if inversion.token in vocabulary or f"{inversion.token}</w>" in vocabulary:
            log.warning(
                "%s %r is a word the tokenizer already knows: wherever a prompt says it, the "
                "embedding replaces the word; use a new token, such as <%s-style>",
                key,
                inversion.token,
                inversion.token.strip("<>"),
            )


def finetune(spec: JobSpec, force: bool = False) -> FinetuneResult:
    """Train the job's `finetune:` adapter, or reuse it when complete for these images.

    Everything is checked before training: the base model and the job's LoRAs, the concepts,
    every real image (readable, large enough), the token. Prior preservation's class images
    are a run of their own, into the adapter's `class-images/`. `force` starts over."""
    if spec.finetune is None:
        raise SpecError("finetune: the job has no finetune: section (method, source, steps)")
    warn_token_unused(spec)
    check_models(spec.generation, spec.paths)
    concepts = concepts_for(spec)
    taught = real_images(spec, concepts)
    reused = reusable_adapter(spec, taught, force)
    if reused is not None:
        return reused
    folder, settings = Path(spec.paths.finetuned), settings_for(spec)
    folder.mkdir(parents=True, exist_ok=True)
    prior = []
    if spec.finetune.prior_preservation is not None:
        class_spec = class_image_spec(spec, taught, concepts, folder / "class-images")
        run_job(class_spec, RunOptions(workers=1, distributor="local"))
        prior = read_class_images(folder / "class-images", settings.resolution)
    g, paths = spec.generation, spec.paths
    card = train_adapter(paths.model, taught, settings, folder, prior, g.model, paths.config)
    return result_of(folder, card, trained=True)


def paste_backgrounds(spec: JobSpec) -> SourceSet:
    """The paste's background images, listed (a missing or empty source is an error)."""
    return SourceSet.at("paste.backgrounds", spec.paths.backgrounds, spec.paste.backgrounds)


def check_renders_of(out_dir: Path, spec: JobSpec) -> None:
    """OUT's renders were made by this spec: a paste records the spec it was made for, so one
    made with an edited job file would name renders it did not make."""
    if not parquet.shard_paths(out_dir / "shards"):
        raise OutputError(
            f"{out_dir} holds no renders of this job yet: `augment run JOB` renders them, and "
            "pastes at its end"
        )
    previous, now = previous_spec_hash(out_dir) if out_dir.is_dir() else None, spec.spec_hash()
    if previous is not None and previous != now:
        raise OutputError(
            f"{out_dir} holds the renders of a different spec "
            f"({spec_change(out_dir, spec, previous, now)}); paste with the job file that "
            "rendered them, or run this one first (`augment run JOB`, into another --out), "
            "which pastes at its end"
        )


def paste(spec: JobSpec, force: bool = False) -> PasteResult:
    """Paste the run's segmented renders (OUT) onto the backgrounds, into OUT/paste (resumed
    when it holds the same paste; `force` starts it over)."""
    if spec.paste is None:
        raise SpecError("this job has no paste: section; add one (see the README, Copy-paste)")
    started = time.perf_counter()
    out_dir = Path(spec.output.dir)
    check_inputs_outside_output(spec, out_dir)
    backgrounds = paste_backgrounds(spec)
    check_renders_of(out_dir, spec)
    concepts = concepts_for(spec)
    index = concept_index(concepts)  # background labels -> concepts, built once
    release = lock_output(out_dir)  # a second paste (or a run) into OUT meanwhile: refused
    try:
        return paste_locked(spec, force, backgrounds, concepts, index, started)
    finally:
        release()


def paste_locked(
    spec: JobSpec,
    force: bool,
    backgrounds: SourceSet,
    concepts: list[Concept],
    index: dict,
    started: float,
) -> PasteResult:
    """`paste`, OUT's lock held: two pastes at once wrote each canvas twice."""
    from augment.gallery import gallery_settings, refresh_gallery
    from augment.generate.engine import run_provenance
    from augment.labels import scale_box
    from augment.labels.paste import (
        PasteResult,
        background_mask,
        known_boxes,
        load_instances,
        paste_onto,
        paste_plan,
        paste_record,
        prepare_paste_output,
    )
    from augment.progress import image_progress

    settings = spec.paste
    out_dir = Path(spec.output.dir)
    instances = load_instances(out_dir, concepts)
    folder = out_dir / "paste"
    # a paste made again from other renders starts from an empty folder: what `augment export`
    # and `augment view` made there is made again, as they were made (not after --force)
    kept = {} if force else held_exports(folder, spec.output.formats)
    gallery = None if force else gallery_settings(folder)
    prepare_paste_output(folder, spec, force, instances)
    shards_dir = folder / "shards"
    parquet.remove_temp_files(shards_dir)
    done = resume_point(folder, "pasted")  # a damaged shard is moved aside, not a dead end
    items = paste_plan(spec.name, spec.seed, backgrounds.images, settings.images_per_background)
    failures = list(backgrounds.unreadable)
    provenance = run_provenance(spec)
    pending, written, count, bare = [], 0, 0, 0
    todo = [item for item in items if item.item_id not in done]

    def commit() -> None:
        nonlocal pending
        if pending:
            name = f"part-{parquet.next_shard_index(shards_dir):05d}.parquet"
            parquet.write_shard(shards_dir, name, pending)
            pending = []

    with image_progress(len(todo), "pasting") as advance:
        for item in todo:
            begun = time.perf_counter()
            background = backgrounds.by_id[item.background_id]
            try:
                pixels = np.asarray(backgrounds.pixels(item.background_id))
            except SpecError as exc:
                failures.append({"source": background.location, "error": str(exc)})
                advance(1)
                continue
            # The annotation's boxes, in the pixels' size (a file resized in proportion, as
            # img2img takes it) and clipped to the image (a box may reach past its edge).
            annotated, size = (background.width, background.height), pixels.shape[1::-1]
            known = [
                (category_id, tuple(box), background_mask(mask, annotated, size))
                for category_id, bbox, mask in known_boxes(background, index)
                if (box := scale_box(bbox, annotated, size))[2] > 0 and box[3] > 0
            ]
            taken = [scale_box(box.bbox, annotated, size) for box in background.boxes]
            rng = np.random.default_rng(item.seed)
            composite, pasted = paste_onto(pixels, taken, instances, settings, rng)
            pending.append(
                paste_record(
                    item,
                    background,
                    known,
                    composite,
                    pasted,
                    settings,
                    time.perf_counter() - begun,
                    provenance,
                )
            )
            written += 1
            count += len(pasted)
            bare += not pasted
            if len(pending) >= spec.output.rows_per_shard:
                commit()
            advance(1)
        commit()
    if bare:
        log.warning(
            "paste: %d of %d canvases got no instance, kept as background-only negatives: at "
            "scale %s the instances do not fit the backgrounds, or find no place under "
            "max_overlap %s",
            bare,
            written,
            settings.scale,
            settings.max_overlap,
        )
    seconds = time.perf_counter() - started
    shards = parquet.shard_paths(shards_dir)
    manifest = {
        "job": spec.name,
        "paste_hash": spec.paste_hash(),
        "renders": str(out_dir),
        "counts": {
            "planned": len(items),
            "records": sum(parquet.pq.ParquetFile(p).metadata.num_rows for p in shards),
            "instances_available": len(instances),
            "failed": len(failures),
        },
        "timings": {"last_run_s": round(seconds, 3)},
        "versions": package_versions(),
        "shards": [p.name for p in shards],
        "categories": categories_for(concepts),
        "failures": failures,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    outputs = {"manifest": folder / "manifest.json", "shards": shards_dir}
    if shards:
        for name in dict.fromkeys([*formats_to_refresh(folder, spec.output.formats), *kept]):
            outputs.update(export(folder, [name], kept.get(name)))
        outputs.update(refresh_gallery(folder, gallery))
    return PasteResult(
        folder, len(items), len(items) - len(todo), written, count, len(failures), seconds, outputs
    )


def held_exports(out_dir: Path, formats: list[str]) -> dict[str, bool]:
    """The exports OUT holds (or a run writes) -> whether each keeps flagged images, as its
    folder records it."""
    return {
        name: export_settings(Path(out_dir) / name).get("include_flagged") is True
        for name in formats_to_refresh(out_dir, formats)
        if (Path(out_dir) / name).is_dir()
    }


def with_earlier_plan(
    out_dir: Path,
    spec: JobSpec,
    items: list[WorkItem],
    concepts: list[Concept],
    sources: SourceSet | None,
) -> list[WorkItem]:
    """OUT's plan: this run's items and those OUT planned before, in the spec's plan order.

    A run with --limit renders at most that many items, but it does not shrink what OUT holds:
    over a run that planned more (the whole job, or a larger limit), the items planned then
    stay in plan.parquet and the manifest, and the duplicate pass keeps the job's order. (The
    limit is not part of the spec's hash: a limited trial run, then the whole job, is one run.)
    """
    saved = saved_plan(out_dir, ["item_id"]) if spec.limit is not None else None
    if saved is None:
        return items
    earlier = set(saved.column("item_id").to_pylist())
    ids = {item.item_id for item in items}
    if earlier <= ids:
        return items
    # the runs' limits each kept the plan's first items: together, its first len(earlier | ids)
    # the job's every prompt was checked when `items` were planned: not again
    wider = spec.model_copy(update={"limit": len(earlier | ids)})
    first = plan_for(wider, concepts, sources, check_all=False)
    if not earlier <= {item.item_id for item in first}:  # OUT's plan is not of those: all of it
        first = plan_for(spec.model_copy(update={"limit": None}), concepts, sources)
    return [item for item in first if item.item_id in ids or item.item_id in earlier]


def check_inputs(spec: JobSpec) -> list[Concept]:
    """The job's concepts, once its models are found where it says (the generator, scorer,
    detector and segmenter; an adapter the spec fine-tunes is trained first): a run or a
    service fails here, before it writes or loads anything."""
    check_taught_tokens(spec)  # before a fine-tune trains
    if spec.finetune is not None:  # trains the adapter when this spec's is missing
        finetune(spec)
    check_models(spec.generation, spec.paths)
    warn_inversion_tokens(spec)
    if spec.generation.guidance_scale <= 1 and spec.prompts.negative_prompt not in (
        "",
        DEFAULT_NEGATIVE,  # not the user's: the default, which a dumped spec holds too
    ):
        log.warning(
            "prompts.negative_prompt is not used at guidance_scale %g: a negative prompt steers "
            "classifier-free guidance, which runs above 1 (the records still name it)",
            spec.generation.guidance_scale,
        )
    concepts = concepts_for(spec)
    check_scorer(spec.filters, spec.paths.scorer, [c.name for c in concepts])
    if spec.labels is not None:
        check_detector(spec.labels, spec.paths.detector)
    if spec.segment is not None:
        check_segmenter(spec.segment, spec.paths.segmenter)
    return concepts


def run_job(spec: JobSpec, options: RunOptions | None = None) -> RunResult:
    """Run (or resume) a job; returns what was done and where the outputs are."""
    from augment.distribute import cluster_placement
    from augment.gallery import refresh_gallery

    options = options or RunOptions()
    started = time.perf_counter()
    out_dir = Path(spec.output.dir)
    remote = options.distributor == "ray" and (options.address or os.environ.get("RAY_ADDRESS"))
    if remote:  # a wrong address (checked first), or a cluster with no room: before OUT
        cluster_placement(options.address)
    check_inputs_outside_output(spec, out_dir)
    if not options.force:  # --force starts over, the half-done filter's flags with the rest
        check_no_filter_stopped(out_dir)
    concepts = check_inputs(spec)
    if not remote:  # rendered on this machine: float16 on a CPU, named before OUT is written
        from augment.generate.pipelines import select_device, torch_dtype

        torch_dtype(spec.generation.dtype, select_device(spec.generation.device))
    if spec.paste is not None:  # fail before touching OUT
        from augment.labels.paste import check_paste_folder

        paste_backgrounds(spec)
        check_paste_folder(out_dir / "paste")
    sources = SourceSet.of(spec) if spec.generation.mode in SOURCE_MODES else None
    items = plan_for(spec, concepts, sources)  # what this run renders
    release = prepare_output(out_dir, spec, options.force, concepts)
    try:
        saved_plan(out_dir, ["item_id"], drop=True)  # a damaged plan: written anew below
        planned = with_earlier_plan(out_dir, spec, items, concepts, sources)  # what OUT holds
        parquet.remove_temp_files(out_dir / "shards")
        done = resume_point(out_dir)
        check_committed_prompts(out_dir, spec, concepts, planned, done)
        if sources is not None:
            check_sources_kept(out_dir, planned)
        check_committed_records(out_dir, spec, planned)  # after those, which say more
        write_plan(planned, out_dir / "plan.parquet")
        check_same_weights(out_dir, spec)
        before = {path.name for path in parquet.shard_paths(out_dir / "shards")}
        try:
            rendering = render_blocks(spec, concepts, items, done, out_dir, options)
            failures = rendering.failures + (sources.unreadable if sources is not None else [])
        finally:
            parquet.remove_temp_files(out_dir / "shards")  # a worker killed mid-write leaves one
        late = {p.name for p in parquet.shard_paths(out_dir / "shards")} - before
        if late - set(rendering.shards):  # a stopped run's worker committed a block since
            check_committed_records(out_dir, spec, planned)
        if rendering.rendered == 0 and duplicates_checked(out_dir):  # nothing new to compare
            duplicates = parquet.count_true(out_dir / "shards", ["duplicate"])[1]["duplicate"]
        else:
            duplicates = flag_duplicates(
                out_dir / "shards",
                [item.item_id for item in planned],
                source_pictures(spec, planned, sources),
            )
        outputs = {
            "spec": out_dir / "job.yaml",
            "plan": out_dir / "plan.parquet",
            "shards": out_dir / "shards",
        }
        seconds = time.perf_counter() - started
        outputs["manifest"] = write_manifest(
            out_dir, spec, concepts, planned, seconds, failures, rendering.seconds
        )
        flagged = rendering.flagged
        if parquet.shard_paths(out_dir / "shards"):
            last = last_filter(out_dir, spec)
            if last is None:
                # written again where the shards changed (their flags, new images), else kept
                formats = formats_to_refresh(out_dir, spec.output.formats)
                outputs.update(export(out_dir, formats, unless_current=True))
                outputs.update(refresh_gallery(out_dir, unless_current=True))
            else:  # `augment filter` set other flags than the job's: the new images get them too
                log.info("applying the last `augment filter` (%s) to this run's images", last)
                filtered = refilter(out_dir, last["scorer"], *last["minimums"], command="run")
                outputs.update(filtered.outputs)
                duplicates = filtered.after["duplicate"]
                # this call's images as that filter flagged them, not as the job's own did
                flagged = flags_in(out_dir / "shards", rendering.shards)
            if spec.generation.mode == "interpolate":
                outputs["animations"] = write_animations(
                    out_dir, spec.generation.interpolate.frame_ms
                )
        if spec.paste is not None and parquet.shard_paths(out_dir / "shards"):
            outputs["paste"] = paste(spec, options.force).out_dir
        return RunResult(
            out_dir=out_dir,
            planned=len(planned),
            skipped=sum(item.item_id in done for item in planned),
            rendered=rendering.rendered,
            flagged=flagged,
            failed=len(failures),
            seconds=time.perf_counter() - started,  # the exports, gallery and paste too
            rendering_seconds=rendering.seconds,
            duplicates=duplicates,
            outputs=outputs,
            failures=failures,
        )
    finally:
        release()


def last_filter(out_dir: Path, spec: JobSpec) -> dict | None:
    """The settings of the last `augment filter` of OUT, when they are not the job's own."""
    last = read_manifest(out_dir).get("filters")
    f = spec.filters
    if last is None or (last["scorer"], last["min_concept_score"], last["min_clip_score"]) == (
        f.scorer,
        f.min_concept_score,
        f.min_clip_score,
    ):
        return None
    if last.get("real"):
        log.warning(
            "duplicates of the real pool %s are not looked for again: run `augment filter %s "
            "--real %s` to flag this run's new images against it",
            last["real"],
            out_dir,
            last["real"],
        )
    minimums = (last["min_concept_score"], last["min_clip_score"])
    return {"scorer": last["scorer"], "minimums": minimums}


@dataclass
class FilterResult:
    out_dir: Path
    records: int
    rescored: bool  # the images were scored again (another scorer); else the stored scores
    rewritten: int  # shards whose records changed
    before: dict[str, int]  # flag -> count, before and after
    after: dict[str, int]
    outputs: dict[str, Path] = field(default_factory=dict)


def plan_order(out_dir: Path, spec: JobSpec, items: list[WorkItem]) -> list[str]:
    """The item_ids in the run's plan order, which decides the original of each duplicate
    group. A folder that `augment serve --write` filled has no plan.parquet: its items come
    from the job's own plan (`items`, or planned here), as a batch run would have ordered them."""
    saved = saved_plan(out_dir, ["item_id"])
    if saved is not None:
        return saved.column("item_id").to_pylist()
    return [item.item_id for item in (items or plan_for(spec))]


def saved_plan(out_dir: Path, columns: list[str], drop: bool = False) -> pa.Table | None:
    """OUT/plan.parquet's `columns`; None where there is none, or where it cannot be read
    (said in a warning; `drop`: and removed, as a run does before it plans, since it writes
    the plan anew). A damaged plan was a fault of augment to `run` and `filter`, though a
    deleted one resumed."""
    path = out_dir / "plan.parquet"
    if not path.is_file():
        return None
    try:
        return parquet.read_table(path, columns)
    except (OSError, pa.ArrowException, ValueError) as exc:
        log.warning(
            "%s cannot be read (%s): %s",
            path,
            first_line(exc),
            "the run writes it anew from the spec" if drop else "the spec's plan order is used",
        )
        if drop:
            path.unlink()
        return None


def filter_command(out_dir: Path, settings: dict) -> str:
    """The `augment filter` command line of a filter's settings (minimums only with a scorer:
    without one there is nothing to compare them with, and the command refuses them)."""
    options = [("--scorer", settings.get("scorer"))]
    if settings.get("scorer") is not None:
        options += [("--min-concept-score", settings.get("min_concept_score"))]
        options += [("--min-clip-score", settings.get("min_clip_score"))]
    options += [("--real", settings.get("real"))]
    words = [f"{name} {value}" for name, value in options if value is not None]
    return " ".join(["augment filter", str(out_dir), *words])


def flags_in(shards_dir: Path, names: list[str]) -> int:
    """The images of these shards that carry a flag other than `duplicate` (as a block counts
    its own, before the duplicate pass)."""
    checks = [flag for flag in FLAGS if flag != "duplicate"]
    flagged = 0
    for name in names:
        rows = parquet.read_shard(shards_dir / name, checks).to_pylist()
        flagged += sum(any(row[flag] for flag in checks) for row in rows)
    return flagged


def check_no_filter_stopped(out_dir: Path, settings: dict | None = None) -> None:
    """Refuse to build on a filter that was stopped half way, unless this is it again
    (`settings`: those of the filter about to run)."""
    mark = Path(out_dir) / FILTER_MARK
    if not mark.is_file():
        return
    try:
        stopped = json.loads(mark.read_text())
    except (OSError, ValueError):
        stopped = {}
    if settings is not None and stopped == settings:
        return
    raise OutputError(
        f"{out_dir} holds a filter that was stopped half way: some shards carry its flags (or "
        "its scorer's scores), the others the earlier ones; finish it first with "
        f"`{filter_command(out_dir, stopped)}`"
    )


def refilter(
    out_dir: Path,
    scorer: str | None = None,
    min_concept_score: float | None = None,
    min_clip_score: float | None = None,
    real: list[Picture] | None = None,
    real_name: str | None = None,
    command: str = "filter",
) -> FilterResult:
    """Flag a finished run again, without rendering: other minimums (the stored scores), or
    another scorer (the images scored again), and duplicates (also of `real` pictures, when
    given). Shards whose records change are rewritten in place, atomically; the same settings
    as before give back byte-identical shards. The manifest keeps each filter's settings and
    counts (`filter_history`, each entry naming the `command` that made it: "run" when a
    resumed run applies the last filter to its new images), and the run's exports are written
    again. A later `run_job` of the same spec keeps them, and flags the images it adds the
    same way."""
    from augment.filters import ImageFilter, is_low
    from augment.gallery import check_gallery_replaceable, refresh_gallery

    out_dir = Path(out_dir)
    saved, manifest_path = out_dir / "job.yaml", out_dir / "manifest.json"
    if (out_dir / "paste.json").is_file():  # it has a manifest, but of composites, not renders
        raise OutputError(
            f"{out_dir} is a paste folder (the canvases `augment paste` made from a run's "
            f"renders), not a run: filter the run folder, {out_dir.parent}; then `augment paste "
            f"JOB --out {out_dir.parent}` pastes again from the renders the filter keeps"
        )
    if not saved.is_file() or not manifest_path.is_file():
        raise OutputError(
            f"{out_dir} holds no finished run (job.yaml and manifest.json); `augment run` it first"
        )
    shards_dir = out_dir / "shards"
    _, damaged = parquet.check_shards(shards_dir)
    if damaged:
        shard, reason = next(iter(damaged.items()))
        raise OutputError(
            f"shard {shard} cannot be read ({reason}); rerun `augment run` on the job to "
            "quarantine it and render its images again, then filter"
        )
    parquet.run_shards(out_dir)
    previous = saved_job_spec(out_dir).model_dump(mode="json")  # a damaged one is named here
    manifest = read_manifest(out_dir)
    current = run_filters(out_dir)  # the last filter applied, else the job's
    chosen = {"scorer": scorer, "min_concept_score": min_concept_score}
    chosen["min_clip_score"] = min_clip_score
    overrides = {
        f"filters.{key}": current[key] if value is None else value for key, value in chosen.items()
    }
    if overrides["filters.scorer"] is None and (min_concept_score, min_clip_score) != (None, None):
        raise SpecError(
            f"{out_dir} was rendered without a scorer, so it has no scores to compare with a "
            "minimum; give --scorer (a classifier or CLIP folder, or builtin:digits-scorer)"
        )
    spec = saved_run_spec(out_dir, overrides)
    concepts = [category["name"] for category in run_categories(out_dir)]
    location = check_scorer(spec.filters, spec.paths.scorer, concepts)
    rescore = location is not None and spec.filters.scorer != current["scorer"]
    image_filter = ImageFilter(spec.filters, location, concepts) if rescore else None
    sources = SourceSet.of(spec) if spec.generation.mode in COPYING_MODES else None
    items = plan_for(spec, sources=sources) if sources is not None else []
    order = plan_order(out_dir, spec, items)  # before any shard is rewritten
    settings = {
        "scorer": spec.filters.scorer,
        "min_concept_score": spec.filters.min_concept_score,
        "min_clip_score": spec.filters.min_clip_score,
        "real": real_name,
    }
    if command != "run":  # a run checked before it rendered
        check_no_filter_stopped(out_dir, settings)
    release = lock_output(out_dir, option="")  # never beside a run writing OUT
    try:
        for folder in (out_dir, shards_dir):  # the manifest and exports too, or no shard changes
            check_writable(folder, "give write access to it, then filter again")
        check_exports_replaceable(out_dir, formats_to_refresh(out_dir, spec.output.formats))
        check_gallery_replaceable(out_dir)
        _, before = parquet.count_true(shards_dir, list(FLAGS))
        (out_dir / FILTER_MARK).write_text(json.dumps(settings))
        rewritten: set[str] = set()  # the names of the shards whose records changed
        for path in parquet.shard_paths(shards_dir):
            table = parquet.read_shard(path)
            records = [{**record, "filtered": False} for record in table.to_pylist()]
            if rescore:
                records = image_filter(records)
            else:
                # images a run added since without a scorer (a job with none, resumed after
                # `augment filter --scorer`): scored by the same scorer now
                unscored = [n for n, r in enumerate(records) if r["concept_score"] is None]
                if unscored and location is not None:
                    image_filter = image_filter or ImageFilter(spec.filters, location, concepts)
                    scored = image_filter([records[n] for n in unscored])
                    for n, record in zip(unscored, scored, strict=True):
                        records[n] = record
                for record in records:
                    scores = record["concept_score"], record["clip_score"]
                    record["filtered"] = is_low(spec.filters, *scores)
            changed = parquet.pa.Table.from_pylist(records, schema=parquet.RECORD_SCHEMA)
            if not changed.equals(table.cast(parquet.RECORD_SCHEMA)):
                parquet.write_table(shards_dir, path.name, changed)
                rewritten.add(path.name)
        known = source_pictures(spec, items, sources) + list(real or ())  # sources, and a pool
        flag_duplicates(shards_dir, order, known, rewritten)
        manifest["duplicates_checked"] = parquet.shards_fingerprint(shards_dir)
        _, after = parquet.count_true(shards_dir, list(FLAGS))
        history = manifest.get("filter_history") or [
            {"at": manifest["finished"], "command": "run", **previous["filters"], "flags": before}
        ]
        now = datetime.now(UTC).isoformat(timespec="seconds")
        entry = {"at": now, "command": command, **settings, "rescored": rescore, "flags": after}
        history.append(entry)
        manifest["counts"].update(after)
        manifest["filters"] = settings
        manifest["filter_history"] = history
        save_manifest(out_dir, manifest)
        formats = formats_to_refresh(out_dir, spec.output.formats)  # kept where no flag changed
        outputs = export(out_dir, formats, unless_current=True)
        outputs.update(refresh_gallery(out_dir, unless_current=True))  # its flags, the new ones
        # only now: a filter stopped while it rewrote the exports or gallery left them with
        # the earlier flags and no word of it; the mark sends the next command back to it
        (out_dir / FILTER_MARK).unlink(missing_ok=True)
        if (out_dir / "paste").is_dir() and (rewritten or before != after):
            log.warning(
                "%s holds canvases pasted from the renders the earlier flags kept; `augment "
                "paste JOB --out %s` pastes again from those this filter keeps",
                out_dir / "paste",
                out_dir,
            )
        records = sum(s["rows"] for s in manifest["shards"])
        return FilterResult(out_dir, records, rescore, len(rewritten), before, after, outputs)
    finally:
        release()
