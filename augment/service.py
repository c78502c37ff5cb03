"""On-demand generation: `augment serve JOB`, a Ray Serve application over the batch path's
worker.

A request names one of the job's concepts and how many images (`n`, from prompt variant `start`
on), and may bring its own prompt template, job seed and a few generation overrides. The
service turns it into the very work items a batch run's plan holds (`plan_for` on the job, for
those prompt variants alone), and renders them with a `BlockWorker`, the class behind every
batch run: same generator, same checks, same labels and filter. So a served item and the same
item from `augment run` are the same PNG bytes; one engine, two front ends.

Items from every caller are rendered together (`serve.batch`, up to the job's batch size; two
batches in flight, so one renders while the other is encoded and filtered). With `write`, one
writer commits every served batch to an output folder as a shard, skipping items already there,
so what was served reads, exports and benchmarks like any run.

Every error the service answers has one shape, `{"error": "one line"}`, under its HTTP status:
4xx for a request to change (a bad body, an unknown concept or route, a method the route does
not take), 5xx for a failure to retry; nothing a request holds can take a replica down.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException

from augment.config import GenerationSpec, JobSpec, load_spec
from augment.errors import (
    AugmentError,
    OutputError,
    RequestError,
    as_list,
    at_least,
    first_line,
    some_of,
)
from augment.records import WorkItem
from augment.taxonomy.concept import Concept

log = logging.getLogger(__name__)

#: Generation settings a request may override: those a pipeline call takes, so the one loaded
#: pipeline renders them all.
CALL_SETTINGS = ("num_inference_steps", "guidance_scale", "height", "width")

APP_NAME = "augment"

#: A writing service rewrites its folder's manifest at most this often (seconds).
MANIFEST_EVERY_S = 10.0

#: The floor of a service's default largest size (ServeOptions.max_size): Stable Diffusion's
#: 1024 px (SDXL's native size), whatever the job's own.
DEFAULT_MAX_SIZE = 1024

#: Requests a replica holds at once: enough that concurrent callers' items meet in one batch.
MAX_ONGOING_REQUESTS = 64


@dataclass
class ServeOptions:
    """How to serve, not what: none of these change an image."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int | None = None  # default: one per GPU of the cluster, else one CPU replica
    max_images: int = 64  # per request
    batch_wait_s: float = 0.05  # how long a batch waits for more callers' items
    write: str | None = None  # commit every served image to this output folder
    overridable: tuple[str, ...] = CALL_SETTINGS
    address: str | None = None  # an existing Ray cluster; default: RAY_ADDRESS, else local
    # The largest height or width a request's overrides may ask (pixels): memory grows with
    # the square of it. Default: the larger of twice the job's longer side and 1024.
    max_size: int | None = None

    def __post_init__(self) -> None:
        at_least("port", self.port, 1)
        if self.port > 65535:
            raise AugmentError(f"port must be at most 65535, got {self.port}")
        at_least("max_images", self.max_images, 1)
        at_least("batch_wait_s", self.batch_wait_s, 0.0)
        if self.replicas is not None:
            at_least("replicas", self.replicas, 1)
        if self.max_size is not None:
            at_least("max_size", self.max_size, 8)
        self.overridable = as_list(self.overridable)  # one name, not its letters
        if [key.lower() for key in self.overridable] == ["none"]:  # as the help offers
            self.overridable = ()
        unknown = [key for key in self.overridable if key not in CALL_SETTINGS]
        if unknown:
            raise AugmentError(
                f"overridable: {unknown[0]} cannot change per request (the loaded pipeline "
                f"would have to change); choose among {', '.join(CALL_SETTINGS)}"
            )
        self.overridable = tuple(self.overridable)

    def largest_size(self, spec: JobSpec) -> int:
        """The largest height or width a request may ask of this job."""
        if self.max_size is not None:
            return self.max_size
        return max(2 * max(spec.generation.height, spec.generation.width), DEFAULT_MAX_SIZE)


class GenerateRequest(BaseModel):
    """The body of POST /generate."""

    model_config = ConfigDict(extra="forbid")

    concept: str | None = None  # a concept's id, name or synset (GET /concepts)
    prompt: str | None = None  # a template over the concept's fields, instead of the job's
    n: int = 1
    start: int = Field(default=0, ge=0, le=10**6)  # the first prompt variant
    seed: int | None = Field(default=None, ge=0)  # the job seed items derive theirs from
    overrides: dict[str, Any] = {}


@dataclass
class Order:
    """A request made concrete: its work items and the settings they render with."""

    items: list[WorkItem]
    settings: GenerationSpec
    key: str = field(init=False)  # items of one key render in the same batch

    def __post_init__(self) -> None:
        self.key = self.settings.model_dump_json()


@dataclass
class ConceptIndex:
    """The job's concepts by id, name or synset: as written first, then in any case where that
    names one concept only ("apple" asked for Apple, the first of Apple and apple)."""

    concepts: list[Concept]
    exact: dict[str, dict[str, Concept]] = field(default_factory=dict)
    folded: dict[str, dict[str, Concept]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for concept in self.concepts:
            for key in (concept.id, concept.name, concept.synset):
                if key:
                    self.exact.setdefault(key, {})[concept.id] = concept
                    self.folded.setdefault(key.lower(), {})[concept.id] = concept

    def find(self, name: str) -> Concept | None:
        """The one concept `name` names; a RequestError where it names several (two WordNet
        concepts share a name: the first was served, the other one only by its id)."""
        exact = list(self.exact.get(name, {}).values())
        matches = exact or list(self.folded.get(name.lower(), {}).values())
        if len(matches) > 1:
            shown = ", ".join(f"{c.name} ({c.id})" for c in matches[:4])
            how = "" if exact else " in any case"
            raise RequestError(
                f"concept {name!r} names several{how} ({shown}); give its id (GET /concepts)",
                404,
            )
        return matches[0] if matches else None


def concept_index(concepts: list[Concept]) -> ConceptIndex:
    """The job's concepts, found by id, name or synset."""
    return ConceptIndex(concepts)


def order_for(
    spec: JobSpec, concepts: ConceptIndex, request: GenerateRequest, options: ServeOptions
) -> Order:
    """The work items a request asks for (prompt variants `start` to `start + n - 1`: those a
    batch run of the same job, seed and prompt plans) and their settings; a RequestError says
    what is wrong with it."""
    from augment.job import plan_for

    if not 1 <= request.n <= options.max_images:
        raise RequestError(f"n must be between 1 and {options.max_images}, got {request.n}")
    if not request.concept:
        raise RequestError(
            "name a concept (GET /concepts lists the job's); a prompt only replaces its templates"
        )
    concept = concepts.find(request.concept)
    if concept is None:
        known = list(dict.fromkeys(c.name for c in concepts.concepts))
        raise RequestError(
            f"unknown concept {request.concept!r}; this job has {some_of(known, 12)} (GET "
            "/concepts)",
            404,
        )
    refused = [key for key in request.overrides if key not in options.overridable]
    if refused:
        allowed = ", ".join(options.overridable) or "none"
        raise RequestError(f"overrides: {refused[0]} cannot be set per request; allowed: {allowed}")
    per_concept = spec.prompts.images_per_concept
    if options.write and request.start + request.n > per_concept:  # outside the job's plan
        raise RequestError(
            f"this service writes the job's own dataset (--write), {per_concept} image(s) per "
            f"concept: variants {request.start} to {request.start + request.n - 1} are not in "
            f"it; ask within 0 to {per_concept - 1} (start + n at most {per_concept})"
        )
    if options.write and (request.overrides or request.seed not in (None, spec.seed)):
        raise RequestError(
            "this service writes every image it serves into one dataset, made with the job's "
            "seed and settings (--write): leave out seed and overrides"
        )
    try:
        settings = GenerationSpec.model_validate(
            {**spec.generation.model_dump(), **request.overrides}
        )
    except ValidationError as exc:
        raise RequestError(f"overrides: {validation_line(exc.errors())}") from None
    check_size(settings, options.largest_size(spec))
    changes: dict[str, Any] = {
        "seed": spec.seed if request.seed is None else request.seed,
        "limit": None,
    }
    if request.prompt is not None:
        changes["prompts.templates"] = [request.prompt]
    try:
        job = load_spec(spec, changes)
        items = plan_for(job, [concept], variants=range(request.start, request.start + request.n))
    except AugmentError as exc:
        raise RequestError(f"prompt: {exc}" if request.prompt is not None else str(exc)) from None
    if options.write and request.prompt is not None:  # "a cat" was written as a seven
        raise RequestError(
            "this service writes every image it serves into one dataset, made from the job's "
            "prompts (--write): leave out prompt"
        )
    return Order(items, settings)


def check_size(settings: GenerationSpec, largest: int) -> None:
    """A request's height and width within the service's bound: a 100000 px side would try to
    allocate its latents (and take the replica down with it) before anything refused it."""
    for name in ("height", "width"):
        size = getattr(settings, name)
        if size > largest:
            raise RequestError(
                f"overrides: {name} {size} is above this service's largest size, {largest} px "
                f"(--max-size); ask for at most {largest}"
            )


def validation_line(errors: list[dict]) -> str:
    """Pydantic's first complaint, on one line: where, then what."""
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
    if first.get("type") == "extra_forbidden":
        fields = ", ".join(GenerateRequest.model_fields)
        return f"unknown field {where!r}; a request takes {fields}"
    if not where:  # the body itself: empty, or JSON that is not an object
        example = '{"concept": "seven", "n": 4}'
        return f"the body must be a JSON object such as {example} ({first['msg'].lower()})"
    return f"{where}: {first['msg']}"


def json_record(record: dict) -> dict:
    """A record as JSON: its image by path only (the PNG travels beside it), arrays as lists,
    bytes (the thumbnail) in base64 (`Client` gives them back as bytes)."""
    row = {}
    for key, value in record.items():
        if key == "thumb" and value is not None:
            value = base64.b64encode(value).decode()
        elif key == "image":
            value = {"path": value["path"]} if value else None
        elif hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, list):
            value = [v.tolist() if hasattr(v, "tolist") else v for v in value]
        row[key] = value
    return row


#: What the service answers, for a caller who asked for something else.
ROUTES = "POST /generate, GET /concepts, GET /health, GET /spec"


def error_answer(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error the service answers, `{"error": "one line"}`, so a caller
    (and `Client`) reads a refusal the same way whichever layer made it."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


async def refuse_malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body FastAPI could not read as a request: 400, where FastAPI says 422 in its own
    shape. A body not sent as JSON (`curl -d` says it is a form) is told so, since its words
    may be right."""
    sent_as = request.headers.get("content-type", "").split(";")[0].strip()
    if request.method == "POST" and sent_as != "application/json" and await request.body():
        return error_answer(
            f"the body was sent as {sent_as or 'no Content-Type'}, not JSON; send it with the "
            "header Content-Type: application/json (curl: -H 'Content-Type: application/json')",
            400,
        )
    return error_answer(validation_line(exc.errors()), 400)


async def refuse(_: Request, exc: RequestError) -> JSONResponse:
    return error_answer(str(exc), exc.status)


async def refuse_route(request: Request, exc: HTTPException) -> JSONResponse:
    """A route the service does not have (404) or a method it does not take there (405), which
    FastAPI answers as {"detail": "Not Found"}."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        message = f"no {where} here; this service answers {ROUTES}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        message = f"{request.url.path} takes {allowed}, not {request.method} ({ROUTES})"
    else:
        message = f"{where}: {exc.detail}"
    return error_answer(message, exc.status_code, exc.headers)


async def answer_faults(request: Request, call_next) -> Response:
    """A fault of the service (a bug, not the request's) as a 500 in the same shape, its
    traceback in the replica's log: Starlette would answer plain text."""
    try:
        return await call_next(request)
    except Exception as exc:  # noqa: BLE001 - any fault: the caller gets one line, the log the rest
        log.exception("%s %s failed", request.method, request.url.path)
        return error_answer(
            f"the service failed on {request.method} {request.url.path} "
            f"({type(exc).__name__}: {first_line(exc)}); retry, and if it fails again, the "
            "replica's log has the traceback",
            500,
        )


def answer_errors_in_one_shape(app: FastAPI) -> None:
    """Every error `app` answers as `error_answer` does: request errors, malformed bodies,
    unknown routes and methods, faults."""
    app.add_exception_handler(RequestValidationError, refuse_malformed)
    app.add_exception_handler(RequestError, refuse)
    app.add_exception_handler(HTTPException, refuse_route)
    app.middleware("http")(answer_faults)


api = FastAPI(title="augment", description="Synthetic images on request (augment serve).")
answer_errors_in_one_shape(api)


@serve.deployment(name="Generation")
@serve.ingress(api)
class GenerationService:
    """One replica: a loaded BlockWorker, rendering every caller's items in shared batches."""

    def __init__(self, spec: JobSpec, options: ServeOptions, writer=None):
        from augment.distribute import BlockWorker
        from augment.job import concepts_for

        spec = load_spec(spec)  # names resolve again on this replica's node
        self.spec, self.options, self.writer = spec, options, writer
        self.concepts = concepts_for(spec)
        self.index = concept_index(self.concepts)
        on_gpu = bool(ray.get_gpu_ids())
        # One torch thread on a CPU replica, as a batch run's CPU workers: the same bytes.
        self.worker = BlockWorker(
            spec, [c.name for c in self.concepts], None, threads=None if on_gpu else 1
        )
        if self.worker.init_error is not None:
            raise self.worker.init_error
        first = GenerateRequest(concept=self.concepts[0].id)
        probe = order_for(spec, self.index, first, options).items[0]
        self.batch_size = self.worker.generator.batch_size(probe)
        self.render_together.set_max_batch_size(self.batch_size)
        self.render_together.set_batch_wait_timeout_s(options.batch_wait_s)
        self.served = 0
        self.started = time.time()

    @api.post("/generate")
    async def generate(self, request: GenerateRequest) -> JSONResponse:
        order = order_for(self.spec, self.index, request, self.options)
        results = await asyncio.gather(
            *(self.render_together((item, order)) for item in order.items)
        )
        failed = [result for result in results if isinstance(result, str)]
        if failed:
            return error_answer(
                f"{len(failed)} of {len(results)} images failed: {failed[0]}; retry", 500
            )
        self.served += len(results)
        images = [base64.b64encode(record["image"]["bytes"]).decode() for record in results]
        return JSONResponse({"images": images, "records": [json_record(r) for r in results]})

    @api.get("/concepts")
    def concepts(self) -> list[dict]:
        return [
            {
                "id": c.id,
                "name": c.name,
                "synset": c.synset,
                "category_id": c.category_id,
                "definition": c.definition,
            }
            for c in self.concepts
        ]

    @api.get("/health")
    def health(self) -> dict:
        return {
            "status": "ok",
            "job": self.spec.name,
            "model": self.spec.generation.model,
            "mode": self.spec.generation.mode,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "device": str(self.worker.generator.pipe.device),
            "batch_size": self.batch_size,
            "max_images": self.options.max_images,
            # a --write service refuses every override: it names none
            "overridable": [] if self.options.write else list(self.options.overridable),
            "max_size": self.options.largest_size(self.spec),
            "writes_to": self.options.write,
            # the prompt variants a request may ask for: a --write service's dataset ends there
            "variants": self.spec.prompts.images_per_concept if self.options.write else None,
            "served": self.served,
            "up_s": round(time.time() - self.started, 1),
        }

    @api.get("/spec")
    def job_spec(self) -> dict:
        return self.spec.model_dump(mode="json")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def render_together(self, wanted: list[tuple[WorkItem, Order]]) -> list[dict | str]:
        """Callers' items, one record each (or the error that stopped it), rendered together;
        with a writer, committed before anyone gets them."""
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(None, self.render_wanted, wanted)
        if self.writer is not None:
            unique = {r["item_id"]: r for r in results if not isinstance(r, str)}
            if unique:
                await self.writer.write.remote(list(unique.values()))
        return results

    def render_wanted(self, wanted: list[tuple[WorkItem, Order]]) -> list[dict | str]:
        """Items grouped by their settings, each item once however many callers want it (an
        item is its id and its seed: a request may bring another job seed)."""
        groups: dict[str, tuple[Order, dict[tuple[str, int], WorkItem]]] = {}
        for item, order in wanted:
            group = groups.setdefault(order.key, (order, {}))[1]
            group.setdefault((item.item_id, item.seed), item)
        done: dict[tuple, dict | str] = {}
        for key, (order, items) in groups.items():
            generator = self.worker.generator
            if order.settings != self.spec.generation:
                generator = generator.with_settings(order.settings)
            finished = self.worker.finished_records(list(items.values()), generator)
            errors = {failure["item_id"]: failure["error"] for failure in finished.failures}
            for item_id, seed in items:
                done[key, item_id, seed] = errors.get(item_id, "not rendered")
            for record in finished.records:
                done[key, record["item_id"], record["seed"]] = record
        return [done[order.key, item.item_id, item.seed] for item, order in wanted]


#: What a refused --write folder's message advises: `augment serve` has no --out or --force.
WRITE_REMEDY = "write to another folder (--write), or delete this one"


def prepare_served_folder(spec: JobSpec, out: Path, hold: bool = True) -> tuple[JobSpec, list]:
    """The folder `--write` names, made (or resumed) for this job's images: refused, as a run's
    output folder is, when it holds another job's (or is no folder). Locked for this process's
    life (the writer's), unless `hold` is False."""
    from augment.job import concepts_for, prepare_output

    spec = load_spec(spec, {"output.dir": str(out)})
    concepts = concepts_for(spec)
    release = prepare_output(out, spec, False, concepts, WRITE_REMEDY, option="--write")
    if not hold:
        release()
    return spec, concepts


def check_served_folder(spec: JobSpec, out: Path) -> None:
    """What `prepare_served_folder` would refuse in the folder `--write` names, found without
    writing anything there: checked before Ray starts, while a start refused later (too many
    replicas) must leave the folder as it was."""
    from augment.job import (
        check_output_names,
        check_resumable,
        check_unlocked,
        concepts_for,
        not_writable,
    )

    spec = load_spec(spec, {"output.dir": str(out)})
    if out.exists() and not out.is_dir():
        raise OutputError(f"--write {out} is a file, not a folder; choose another with --write")
    check_output_names(out, spec, "--write")
    check_unlocked(out, "--write")
    check_resumable(out, spec, concepts_for(spec), WRITE_REMEDY)
    nearest = next(folder for folder in (out, *out.parents) if folder.exists())
    if not os.access(nearest, os.W_OK | os.X_OK):
        denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        raise not_writable(out, denied, "choose another with --write")


def undo_for(out: Path) -> Callable[[], None]:
    """What removes, after a refused start, what the start's writer made in `out` (the folders
    it created, its job.yaml, empty shards/ and lock file), leaving what was there before; a
    folder that took a served image keeps everything."""
    from augment.job import LOCK_FILE

    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    before = {path.name for path in out.iterdir()} if out.is_dir() else set()

    def undo() -> None:
        shards = out / "shards"
        if not out.is_dir() or (shards.is_dir() and any(shards.iterdir())):
            return
        for name in {path.name for path in out.iterdir()} - before:
            target = out / name
            if name == "shards":
                target.rmdir()
            elif name in ("job.yaml", "manifest.json", LOCK_FILE):
                target.unlink()
        for folder in missing:  # the deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    return undo


@serve.deployment(name="Writer", num_replicas=1, ray_actor_options={"num_cpus": 0})
class ServedWriter:
    """The one process that commits served images into an output folder: a shard per batch,
    each item at most once (those already there, from a batch run or an earlier service, are
    skipped). The manifest follows with the first shard, then at most every
    MANIFEST_EVERY_S, and when the service stops: it reads every shard, and a long-running
    service would otherwise re-read them all for each batch it serves."""

    def __init__(self, spec: JobSpec, out: str):
        from augment.job import resume_point
        from augment.sinks import parquet

        self.out = Path(out)
        self.spec, self.concepts = prepare_served_folder(spec, self.out)
        parquet.remove_temp_files(self.out / "shards")
        self.done = resume_point(self.out)
        self.next_index = parquet.next_shard_index(self.out / "shards")
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        self.manifest_at: float | None = None  # when the manifest was last written
        self.unsaved = False  # shards committed since

    def write(self, records: list[dict]) -> int:
        """Commit the records not yet in the folder; how many that was."""
        from augment.sinks.parquet import write_shard

        with self.lock:
            new = [r for r in records if r["item_id"] not in self.done]
            if not new:
                return 0
            write_shard(self.out / "shards", f"part-{self.next_index:05d}.parquet", new)
            self.next_index += 1
            self.done.update(r["item_id"] for r in new)
            self.unsaved = True
            if self.manifest_at is None or time.monotonic() - self.manifest_at >= MANIFEST_EVERY_S:
                self.save_manifest()
            return len(new)

    def save_manifest(self) -> None:
        from augment.job import write_manifest

        seconds = time.perf_counter() - self.started
        write_manifest(self.out, self.spec, self.concepts, [], seconds, [])
        self.manifest_at, self.unsaved = time.monotonic(), False

    def __del__(self) -> None:
        """Serve calls this when the service stops: the manifest catches up."""
        if getattr(self, "unsaved", False):  # not when __init__ failed
            with self.lock:
                self.save_manifest()


@dataclass
class Service:
    """A running service: its address, and how to stop it."""

    url: str
    replicas: int
    device: str  # "GPU" or "CPU": what each replica holds
    writes_to: str | None
    shards_before: frozenset[str] = frozenset()  # in writes_to when the service started

    def stop(self) -> None:
        """Shut Serve down (the replicas, the proxy and its port)."""
        serve.shutdown()
        RUNNING.pop(self.url, None)

    def outdated_outputs(self) -> list[str]:
        """The exports and gallery in `writes_to` that an earlier run or filter wrote, which
        leave out the images served since: `augment filter` checks those for duplicates and
        writes these again."""
        if self.writes_to is None:
            return []
        return outdated_outputs(Path(self.writes_to), self.shards_before)


def shard_names(folder: Path) -> frozenset[str]:
    """The names of the shards an output folder holds now."""
    from augment.sinks.parquet import shard_paths

    return frozenset(path.name for path in shard_paths(folder / "shards"))


def outdated_outputs(folder: Path, shards_before: frozenset[str]) -> list[str]:
    """The exports and gallery in `folder` when it holds shards beyond `shards_before`."""
    from augment.sinks import formats_to_refresh

    if shard_names(folder) <= shards_before:
        return []
    return [
        *formats_to_refresh(folder, []),
        *(["gallery"] if (folder / "gallery").is_dir() else []),
    ]


def start_service(spec: JobSpec, options: ServeOptions | None = None) -> Service:
    """Check the job, start Ray (or attach to `options.address`) and the service; returns once
    every replica has loaded its model and answers."""
    from augment.distribute import cluster_placement
    from augment.job import check_inputs

    options = options or ServeOptions()
    if spec.generation.mode != "txt2img":
        raise AugmentError(
            f"augment serve renders txt2img jobs; this one is {spec.generation.mode}, whose "
            "items a request cannot name yet (source images, animation frames): run it with "
            "augment run"
        )
    own = max(spec.generation.height, spec.generation.width)
    if options.largest_size(spec) < own:  # the job's own images would be refused
        raise AugmentError(
            f"max_size {options.max_size} is below the job's own size "
            f"({spec.generation.width}x{spec.generation.height}), which every request renders "
            f"unless it overrides it; give at least {own}"
        )
    check_inputs(spec)
    check_port_free(options.host, options.port)
    if options.write:  # a folder it cannot write to, before Ray and the replicas start
        check_served_folder(spec, Path(options.write))
    placement = cluster_placement(options.address)  # a cluster with no room: said as a run's
    gpus, cpus, fits = placement.gpus, placement.cpus, placement.capacity
    replicas = options.replicas or max(1, gpus)
    if replicas > fits:  # Serve would wait for them forever
        unit = f"{gpus} GPUs and {cpus} CPUs" if gpus else f"{cpus} CPUs and no GPU"
        raise AugmentError(
            f"--replicas {replicas}: this Ray cluster has {unit}, room for {fits} replica(s) "
            f"(each takes {'a GPU and ' if gpus else ''}a CPU); ask for at most {fits}"
        )
    if RUNNING:  # Serve keeps one HTTP proxy and one app of this name a process
        raise AugmentError(
            f"a service already runs in this process, at {next(iter(RUNNING))}: stop it first "
            "(its stop()); a second one would take its place, at its address"
        )
    writer = ServedWriter.bind(spec, options.write) if options.write else None
    app = GenerationService.options(
        num_replicas=replicas,
        ray_actor_options=placement.resources,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        graceful_shutdown_wait_loop_s=0.5,  # a stop waits for requests in flight, not longer
    ).bind(spec, options, writer)
    # Serve's own INFO lines (started, connecting, ready at) would repeat what the returned
    # Service says; its warnings and errors still show.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    undo = undo_for(Path(options.write)) if options.write else lambda: None
    before = shard_names(Path(options.write)) if options.write else frozenset()
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
    except BaseException as exc:  # a start interrupted or failed leaves nothing half-deployed
        cause = replica_error(deployment_messages()) if isinstance(exc, Exception) else None
        serve.shutdown()
        undo()  # nor a --write folder the writer made ready
        if cause is not None:  # the replica's own message (a model that would not load)
            raise AugmentError(f"the service's replicas could not start: {cause}") from None
        raise
    host = "127.0.0.1" if options.host in ("0.0.0.0", "") else options.host
    url = f"http://{host}:{options.port}"
    RUNNING[url] = spec.name
    return Service(url, replicas, "GPU" if gpus else "CPU", options.write, before)


#: The service this process runs (url -> job): a second start replaced its job at its address
#: and returned an address nothing listened on.
RUNNING: dict[str, str] = {}


def deployment_messages() -> list[str]:
    """What Serve says of each deployment of the service: a failed replica's traceback."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - a controller that is gone has nothing more to say
        return []
    return [] if app is None else [d.message for d in app.deployments.values() if d.message]


def replica_error(messages: list[str]) -> str | None:
    """The last augment error a replica's constructor raised, from Serve's tracebacks: Serve
    itself only says that the deployment failed."""
    found = [m for text in messages for m in re.findall(r"augment\.errors\.\w+: (.+)", text)]
    return found[-1].strip() if found else None


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AugmentError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port, or "
                "a --host of this machine"
            ) from None


def replica_actor_names() -> list[tuple[str, str]]:
    """(name, namespace) of every running generation replica: what a chaos test kills."""
    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "Generation" in actor["name"] and "REPLICA" in actor["name"].upper()
    ]
