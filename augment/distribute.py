"""Fan rendering out: blocks of work items -> workers -> committed shards.

The plan is cut into small blocks of whole batches, fixed by the plan (not by the number of
workers), so an item is always rendered in the same batch: a 1-worker and a 2-worker run write
the same bytes. A `BlockWorker` loads its pipeline once and turns one block into one committed
shard. Two distributors share one signature:

- `run_local`: the worker in this process (notebooks, debugging);
- `run_ray`: one Ray actor per GPU, or `workers` CPU actors; a local Ray by default, an existing
  cluster with `address`. A worker that dies is replaced and its block re-queued, a bounded
  number of times; committed shards are never rewritten.

CPU workers run torch on one thread each: float results depend on the thread count, and one
thread per worker keeps images identical however many workers run.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from augment.config import GenerationSpec
from augment.errors import AugmentError
from augment.plan import WorkItem
from augment.sinks import FLAGS
from augment.sinks.parquet import write_shard

log = logging.getLogger(__name__)

#: Blocks per run at least, so small jobs still spread over every worker.
MIN_BLOCKS = 16


@dataclass
class Block:
    index: int
    shard: str  # the file name this block commits
    items: list[WorkItem]


@dataclass
class BlockResult:
    shard: str
    rendered: int
    flagged: int
    seconds: float
    failures: list[dict] = field(default_factory=list)


def block_size(n_items: int, batch_size: int, rows_per_shard: int) -> int:
    """Whole batches per block: at most ~rows_per_shard rows, at least MIN_BLOCKS blocks."""
    rows = min(rows_per_shard, max(batch_size, math.ceil(n_items / MIN_BLOCKS)))
    return math.ceil(rows / batch_size) * batch_size


def make_blocks(
    plan: list[WorkItem], done: set[str], size: int, first_shard_index: int
) -> list[Block]:
    """Cut the plan into fixed blocks; keep the items not yet done; name their shards."""
    blocks = []
    for start in range(0, len(plan), size):
        todo = [item for item in plan[start : start + size] if item.item_id not in done]
        if todo:
            index = first_shard_index + len(blocks)
            blocks.append(Block(index, f"part-{index:05d}.parquet", todo))
    return blocks


class BlockWorker:
    """Loads the generator once; renders blocks into committed shards.

    A batch that raises is retried item by item, each up to `retries` times; an item that still
    fails is reported with its error and left out of the shard (a rerun tries it again), and the
    other items go on.
    """

    def __init__(
        self,
        generation: dict,
        shards_dir: str,
        source: dict | None = None,
        base_dir: str | None = None,
        threads: int | None = 1,
        retries: int = 2,
        filters: dict | None = None,
        concepts: list[str] | None = None,
    ):
        import torch

        from augment.config import SourceSpec
        from augment.generate.engine import make_generator
        from augment.progress import quiet_libraries

        quiet_libraries()
        if threads:
            torch.set_num_threads(threads)
        self.settings = GenerationSpec(**generation)
        self.shards_dir = Path(shards_dir)
        self.retries = retries
        self.init_error: AugmentError | None = None
        self.filter = None
        try:
            self.generator = make_generator(
                self.settings,
                Path(base_dir) if base_dir else None,
                SourceSpec(**source) if source else None,
            )
            if filters and filters.get("scorer"):
                from augment.config import FilterSpec
                from augment.filters import ImageFilter

                self.filter = ImageFilter(
                    FilterSpec(**filters),
                    concepts or [],
                    Path(base_dir) if base_dir else None,
                    str(self.generator.pipe.device),
                )
        except AugmentError as exc:  # raised again by render(), where the driver sees it
            self.init_error = exc

    def render(self, block: Block) -> BlockResult:
        """The Ray entry point (actors are called through methods)."""
        return self(block)

    def __call__(self, block: Block) -> BlockResult:
        from augment.generate.engine import batches

        if self.init_error is not None:
            raise self.init_error
        started = time.perf_counter()
        records: list[dict] = []
        failures: list[dict] = []
        for batch in batches(block.items, self.settings.batch_size):
            try:
                records.extend(self.generator(batch))
            except Exception:  # noqa: BLE001 - one bad batch must not stop the others
                for item in batch:
                    record, failure = self.render_alone(item)
                    records.extend(record)
                    failures.extend(failure)
        if records and self.filter is not None:
            records = self.filter(records)
        if records:
            write_shard(self.shards_dir, block.shard, records)
        flagged = sum(any(r[flag] for flag in FLAGS) for r in records)
        return BlockResult(
            block.shard, len(records), flagged, time.perf_counter() - started, failures
        )

    def render_alone(self, item: WorkItem) -> tuple[list[dict], list[dict]]:
        error = ""
        for _ in range(self.retries):
            try:
                return self.generator([item]), []
            except Exception as exc:  # noqa: BLE001
                error = "".join(traceback.format_exception_only(exc)).strip()
        return [], [{"item_id": item.item_id, "error": error, "attempts": self.retries + 1}]


OnResult = Callable[[Block, BlockResult], None]


def run_local(blocks: list[Block], worker_kwargs: dict, on_result: OnResult, **_) -> None:
    """Render every block in this process, one after the other."""
    import torch

    threads = torch.get_num_threads()
    try:
        worker = BlockWorker(**worker_kwargs)
        for block in blocks:
            on_result(block, worker(block))
    finally:
        torch.set_num_threads(threads)


def connect_ray(address: str | None = None) -> None:
    """Attach to `address` (or RAY_ADDRESS), else start a local Ray with this machine's CPUs."""
    import ray

    if ray.is_initialized():
        return
    private = address is None and "RAY_ADDRESS" not in os.environ
    ray.init(
        address=address,
        include_dashboard=False,
        ignore_reinit_error=True,
        logging_level=logging.ERROR if private else logging.WARNING,  # no banner locally
        log_to_driver=False,
    )


def run_ray(
    blocks: list[Block],
    worker_kwargs: dict,
    on_result: OnResult,
    workers: int | None = None,
    address: str | None = None,
    max_restarts: int = 3,
) -> None:
    """Render blocks on Ray actors: one per GPU when the cluster has GPUs, else CPU workers."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    connect_ray(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        count, options, threads = min(workers or gpus, gpus), {"num_gpus": 1, "num_cpus": 1}, None
    else:
        count, options, threads = workers or int(resources.get("CPU", 1)), {"num_cpus": 1}, 1
    count = max(1, min(count, len(blocks)))
    actor_class = ray.remote(BlockWorker).options(**options, max_restarts=0)

    def start_worker():
        return actor_class.remote(**{**worker_kwargs, "threads": threads})

    actors = [start_worker() for _ in range(count)]
    queue = deque(blocks)
    in_flight: dict = {}  # ObjectRef -> (actor, block)
    restarts = 0
    try:
        while queue or in_flight:
            busy = {id(actor) for actor, _ in in_flight.values()}
            for actor in actors:
                if queue and id(actor) not in busy:
                    block = queue.popleft()
                    in_flight[actor.render.remote(block)] = (actor, block)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, block = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                restarts += 1
                if restarts > max_restarts:
                    raise AugmentError(
                        f"Ray workers died {restarts} times ({exc.__class__.__name__}); "
                        "committed shards are kept: rerun the same command to resume"
                    ) from exc
                log.warning("a worker died; restarting it and re-queueing %s", block.shard)
                actors[actors.index(actor)] = start_worker()
                queue.appendleft(block)
                continue
            except RayTaskError as exc:
                if isinstance(exc.cause, AugmentError):  # a user error: its own message
                    raise exc.cause from None
                raise
            on_result(block, result)
    finally:
        for actor in actors:
            ray.kill(actor)


DISTRIBUTORS = {"local": run_local, "ray": run_ray}


# Cluster job submission ---------------------------------------------------------------------

SUBMIT_EXCLUDES = [
    "out",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
]  # + .git, .venv


def project_root() -> Path:
    """The source checkout `augment` runs from: it becomes the job's working_dir."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise AugmentError(
            "augment submit needs a source checkout of augment (pyproject.toml beside augment/)"
        )
    return root


def portable_spec(spec, job_path: Path, root: Path):
    """The spec with paths the cluster can resolve: list files relative to the project,
    local model folders absolute, the output folder absolute."""
    from augment.taxonomy import resolve_list_file

    updates: dict = {
        "output": {**spec.output.model_dump(), "dir": str(Path(spec.output.dir).resolve())}
    }
    source = spec.taxonomy.source
    if not source.startswith(("wordnet:", "coco")):
        found = resolve_list_file(source, job_path.parent).resolve()
        if not found.is_relative_to(root):
            raise AugmentError(
                f"taxonomy file {found} is outside the project {root}: copy it into "
                "taxonomies/ so the cluster receives it"
            )
        updates["taxonomy"] = {**spec.taxonomy.model_dump(), "source": str(found.relative_to(root))}
    model = Path(job_path.parent, spec.generation.model)
    if not spec.generation.model.startswith("builtin:") and model.is_dir():
        updates["generation"] = {**spec.generation.model_dump(), "model": str(model.resolve())}
    return spec.model_validate({**spec.model_dump(), **updates})


def use_ray_token_if_present() -> None:
    """Ray's own CLI sends the cluster token when one is on this machine; do the same."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_TOKEN" in os.environ or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def job_client(address: str):
    use_ray_token_if_present()  # before Ray reads its configuration
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.ERROR)  # no per-file upload chatter
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise AugmentError(
            f"the Ray cluster at {address} wants a token: set RAY_AUTH_TOKEN (or copy the "
            "head's ~/.ray/auth_token here) and RAY_AUTH_MODE=token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise AugmentError(
            f"cannot reach a Ray cluster at {address} ({exc}); start one with "
            "`ray start --head --dashboard-host 0.0.0.0` and pass http://HEAD:8265"
        ) from None


def submit_job(spec, job_path: Path, address: str, workers: int | None = None) -> str:
    """Submit `augment run` of `spec` to the cluster at `address`; returns the job id."""
    root = project_root()
    portable = portable_spec(spec, Path(job_path), root)
    # The spec travels in an environment variable and is written into the job's own copy of
    # the project, so nothing is left in the user's checkout.
    entrypoint = (
        'printf "%s" "$AUGMENT_SUBMITTED_SPEC" > submitted-job.yaml && '
        "python -m augment.cli run submitted-job.yaml"
    )
    if workers:
        entrypoint += f" --workers {workers}"
    client = job_client(address)
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.submit_job(
                entrypoint=entrypoint,
                runtime_env={
                    "working_dir": str(root),
                    "excludes": SUBMIT_EXCLUDES,
                    "env_vars": {"AUGMENT_SUBMITTED_SPEC": portable.to_yaml()},
                },
                metadata={"augment_job": portable.name, "spec_hash": portable.spec_hash()},
            )
        except RuntimeError as exc:  # a head that just started has no job agent yet
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise AugmentError(f"the cluster at {address} refused the job: {exc}") from None
            time.sleep(2)


def job_status(job_id: str, address: str) -> str:
    return str(job_client(address).get_job_status(job_id).value)


def job_logs(job_id: str, address: str, follow: bool = False):
    """Yield the job's log text; with `follow`, stream it until the job ends."""
    client = job_client(address)
    if not follow:
        yield client.get_job_logs(job_id)
        return
    import asyncio

    stream = client.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                return
    finally:
        loop.close()
