"""Run a job end to end: spec -> concepts -> prompts -> plan -> render -> shards -> exports.

Each stage is a plain function of its own module; this module only chains them and keeps the
output folder consistent: the resolved spec is saved first, committed shards are never
rewritten, a rerun skips item_ids already committed, and a spec that changed is refused.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import yaml

from augment.config import JobSpec
from augment.errors import ModelError, OutputError
from augment.generate.pipelines import load_tokenizer, resolve_model
from augment.plan import WorkItem, build_plan, write_plan
from augment.prompts import Prompt, build_prompts, enforce_token_limit
from augment.sinks import parquet
from augment.taxonomy import Concept, load_concepts

log = logging.getLogger(__name__)

PACKAGES = ("augment", "torch", "diffusers", "transformers", "pyarrow", "ray")


@dataclass
class RunResult:
    out_dir: Path
    planned: int
    skipped: int
    rendered: int
    flagged: int
    seconds: float
    outputs: dict[str, Path] = field(default_factory=dict)


def concepts_for(spec: JobSpec, base_dir: Path | None) -> list[Concept]:
    t = spec.taxonomy
    return load_concepts(t.source, base_dir, t.max_concepts, t.depth, t.leaves, tuple(t.exclude))


def tokenizer_for(spec: JobSpec, base_dir: Path | None):
    """The model's tokenizer, or None (with a warning) when the model is not here."""
    try:
        return load_tokenizer(spec.generation.model, base_dir)
    except ModelError as exc:
        log.warning("prompt lengths not checked: %s", exc)
        return None


def prompts_for(
    spec: JobSpec, concepts: list[Concept], base_dir: Path | None = None
) -> list[Prompt]:
    """The job's prompts, checked against the model's text encoder length when it is here."""
    p = spec.prompts
    prompts = build_prompts(
        concepts,
        p.templates,
        p.negative_prompt,
        p.images_per_concept,
        p.attributes,
        p.combine,
    )
    tokenizer = tokenizer_for(spec, base_dir)
    if tokenizer is not None:
        prompts = enforce_token_limit(prompts, tokenizer, p.max_tokens, p.on_long_prompt)
    return prompts


def plan_for(
    spec: JobSpec, base_dir: Path | None = None, concepts: list[Concept] | None = None
) -> list[WorkItem]:
    """The work items of a spec: concepts x templates x images_per_concept, then --limit."""
    if concepts is None:
        concepts = concepts_for(spec, base_dir)
    items = build_plan(spec.name, spec.seed, prompts_for(spec, concepts, base_dir))
    return limit_plan(items, spec.limit)


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


def prepare_output(out_dir: Path, spec: JobSpec, force: bool) -> None:
    """Create OUT, or check that it holds a run of this same spec (then it resumes)."""
    saved = out_dir / "job.yaml"
    if saved.is_file() and not force:
        previous = JobSpec.model_validate(yaml.safe_load(saved.read_text()))
        if previous.spec_hash() != spec.spec_hash():
            raise OutputError(
                f"{out_dir} holds a run of a different spec (hash {previous.spec_hash()}, "
                f"now {spec.spec_hash()}); use another --out, or --force to delete it and "
                "start over"
            )
    if force:
        for name in ("shards", "coco", "plan.parquet", "manifest.json", "job.yaml"):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    try:
        (out_dir / "shards").mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"output folder {out_dir} is not writable ({exc.strerror}); choose another with --out"
        ) from None
    saved.write_text(spec.to_yaml())


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(
    out_dir: Path, spec: JobSpec, concepts: list[Concept], planned: int, seconds: float
) -> Path:
    """manifest.json: what is in OUT, written last (it marks a finished run)."""
    shards = [
        {"file": p.name, "rows": parquet.pq.ParquetFile(p).metadata.num_rows}
        for p in parquet.shard_paths(out_dir / "shards")
    ]
    flags = {"black": 0, "nan": 0, "nsfw": 0, "filtered": 0}
    for record in parquet.read_records(out_dir / "shards", columns=list(flags)):
        for flag in flags:
            flags[flag] += bool(record[flag])
    manifest = {
        "job": spec.name,
        "spec_hash": spec.spec_hash(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {"planned": planned, "records": sum(s["rows"] for s in shards), **flags},
        "timings": {"last_run_s": round(seconds, 3)},
        "versions": package_versions(),
        "shards": shards,
        "categories": categories_for(concepts),
    }
    path = out_dir / "manifest.json"
    tmp = out_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return path


def render_items(spec: JobSpec, items: list[WorkItem], out_dir: Path, base_dir: Path | None) -> int:
    """Render `items` into committed shards; returns the number of flagged images."""
    from augment.generate.engine import Txt2ImgGenerator, batches
    from augment.progress import image_progress

    generator = Txt2ImgGenerator(spec.generation, base_dir)
    flagged = 0
    with (
        parquet.ShardWriter(out_dir / "shards", spec.output.rows_per_shard) as writer,
        image_progress(len(items), "rendering") as advance,
    ):
        for batch in batches(items, spec.generation.batch_size):
            for record in generator(batch):
                writer.write(record)
                flagged += record["black"] or record["nan"] or record["nsfw"]
            advance(len(batch))
    return flagged


def run_job(spec: JobSpec, base_dir: Path | None = None, force: bool = False) -> RunResult:
    """Run (or resume) a job; returns what was done and where the outputs are."""
    started = time.perf_counter()
    out_dir = Path(spec.output.dir)
    resolve_model(spec.generation.model, base_dir)  # fail before touching OUT
    concepts = concepts_for(spec, base_dir)
    items = plan_for(spec, base_dir, concepts)
    prepare_output(out_dir, spec, force)
    write_plan(items, out_dir / "plan.parquet")
    parquet.remove_temp_files(out_dir / "shards")
    done = parquet.committed_item_ids(out_dir / "shards")
    todo = [item for item in items if item.item_id not in done]
    flagged = render_items(spec, todo, out_dir, base_dir) if todo else 0
    outputs = {
        "spec": out_dir / "job.yaml",
        "plan": out_dir / "plan.parquet",
        "shards": out_dir / "shards",
    }
    if "coco" in spec.output.formats:
        from augment.sinks.coco import export_coco

        outputs["coco"] = export_coco(out_dir, categories_for(concepts))
    seconds = time.perf_counter() - started
    outputs["manifest"] = write_manifest(out_dir, spec, concepts, len(items), seconds)
    return RunResult(
        out_dir=out_dir,
        planned=len(items),
        skipped=len(items) - len(todo),
        rendered=len(todo),
        flagged=flagged,
        seconds=seconds,
        outputs=outputs,
    )
