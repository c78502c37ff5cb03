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

import atexit
import contextlib
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from augment.config import JobSpec, load_spec
from augment.errors import AugmentError, SourceImageError, first_line
from augment.records import FLAGS, WorkItem
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
    seconds: float  # from the start of its rendering to its commit
    failures: list[dict] = field(default_factory=list)
    render_seconds: float = 0.0  # holding the device: the worker's busy time is their sum
    started_at: float = 0.0  # wall clock (time.time) when its rendering began


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


@dataclass
class FinishedRecords:
    """A block's records, labelled and filtered, before they are committed."""

    records: list[dict]
    failures: list[dict]
    render_seconds: float  # holding the device
    finishing_seconds: float  # encoding still waiting, labels, masks, filter
    started_at: float  # wall clock (time.time) when its rendering began


#: Blocks a worker holds at once: one rendering while the one before is encoded, filtered and
#: committed, so the device never waits for that CPU work.
BLOCKS_IN_FLIGHT = 2


def workers_to_feed(held: list[int], queued: int) -> list[int]:
    """Which workers get the next queued blocks (an index per block, in order), given how many
    blocks each holds: first every worker without one, then a second block each while enough
    stay queued for every worker. A second block waits behind the one rendering, so near the
    end it stays queued instead, for whichever worker frees first: given to a busy worker, it
    left another idle for up to a block's time (minutes on a GPU cluster)."""
    held, chosen = list(held), []
    for depth in range(BLOCKS_IN_FLIGHT):
        for worker, blocks in enumerate(held):
            left = queued - len(chosen)
            if blocks == depth and left > 0 and (depth == 0 or left >= len(held)):
                chosen.append(worker)
                held[worker] += 1
    return chosen


class BlockWorker:
    """Loads the generator once; renders blocks into committed shards.

    A batch that raises is retried item by item, each up to `retries` times; an item that still
    fails is reported with its error and left out of the shard (a rerun tries it again), and the
    other items go on.

    Safe to call from BLOCKS_IN_FLIGHT threads at once: every block renders on the worker's one
    render thread, in the order the calling threads reach it (one block on the device at a
    time, and torch's CPU thread pool driven from a single thread; a block's images do not
    depend on that order), and the CPU-side rest of a block (encoding, labels, filter, shard)
    runs in the calling thread, overlapping the next block.
    """

    def __init__(
        self,
        spec: JobSpec,
        concepts: list[str],
        shards_dir: str | Path | None,
        threads: int | None = 1,
        retries: int = 2,
    ):
        import torch

        from augment.generate.engine import make_generator
        from augment.progress import quiet_libraries

        quiet_libraries()
        if threads:
            torch.set_num_threads(threads)
        self.settings = spec.generation
        self.shards_dir = None if shards_dir is None else Path(shards_dir)  # None: not written
        self.retries = retries
        self.init_error: AugmentError | None = None
        self.renderer = ThreadPoolExecutor(1, "render")
        self.commit_lock = threading.Lock()  # the filter's models: one block at a time
        self.filter = None
        self.segmenter = None
        self.labeller = None
        try:
            # Names resolve again on this worker's node: on a cluster, a builtin: name finds the
            # node's own copy; on one machine the same names give the same files.
            spec = load_spec(spec)
            self.generator = make_generator(spec)
            device = str(self.generator.pipe.device)
            if spec.labels is not None:
                from augment.labels.autolabel import AutoLabeller
                from augment.taxonomy import spec_concepts

                names = set(concepts)
                chosen = [c for c in spec_concepts(spec) if c.name in names]
                self.labeller = AutoLabeller(spec.labels, spec.paths.detector, chosen, device)
            if spec.segment is not None:
                from augment.labels.segment import Segmenter

                self.segmenter = Segmenter(spec.segment, spec.paths.segmenter, device)
            if spec.filters.scorer is not None:
                from augment.filters import ImageFilter

                self.filter = ImageFilter(spec.filters, spec.paths.scorer, concepts, device)
        except AugmentError as exc:  # raised again by render(), where the driver sees it
            self.init_error = exc

    def render(self, block: Block) -> BlockResult:
        """The Ray entry point (actors are called through methods)."""
        return self(block)

    def __call__(self, block: Block) -> BlockResult:
        finished = self.finished_records(block.items)
        committed = time.perf_counter()
        if finished.records:
            write_shard(self.shards_dir, block.shard, finished.records)
        flagged = sum(any(r[flag] for flag in FLAGS) for r in finished.records)
        seconds = finished.render_seconds + finished.finishing_seconds
        seconds += time.perf_counter() - committed
        return BlockResult(
            block.shard,
            len(finished.records),
            flagged,
            seconds,
            finished.failures,
            finished.render_seconds,
            finished.started_at,
        )

    def finished_records(self, items: list[WorkItem], generator=None) -> FinishedRecords:
        """The items' records, rendered as a block is (batch by batch, a failed batch item by
        item) by `generator` (default: the job's), then labelled, segmented and filtered as the
        job says; nothing is written (a batch run commits them as a shard, the service answers
        with them)."""
        if self.init_error is not None:
            raise self.init_error
        queue, failures, render_seconds, started_at = self.renderer.submit(
            self.render_block, items, generator or self.generator
        ).result()
        finishing = time.perf_counter()
        with self.commit_lock:
            records = queue.finish()
            if records and self.labeller is not None:
                records = self.labeller(records)
            if records and self.segmenter is not None:
                records = self.segmenter(records)
            if records and self.filter is not None:
                records = self.filter(records)
        finishing_seconds = time.perf_counter() - finishing
        return FinishedRecords(records, failures, render_seconds, finishing_seconds, started_at)

    def render_block(self, items: list[WorkItem], generator) -> tuple:
        """On the render thread: the batches, their encoding queued beside them."""
        from augment.generate.engine import batches

        queue = generator.record_queue()
        failures: list[dict] = []
        started, started_at = time.perf_counter(), time.time()
        for batch in batches(items, generator.batch_size(items[0])):
            try:
                rendered = generator.render_items(batch)
            except Exception:  # noqa: BLE001 - one bad batch must not stop the others
                for item in batch:
                    record, failure = self.render_alone(item, generator)
                    queue.add_records(record)
                    failures.extend(failure)
                continue
            for group in rendered:
                queue.add(group)
        return queue, failures, time.perf_counter() - started, started_at

    def render_alone(self, item: WorkItem, generator) -> tuple[list[dict], list[dict]]:
        error = ""
        for _ in range(self.retries):
            try:
                return generator([item]), []
            except SourceImageError as exc:  # the user's file: trying again cannot help
                return [], [{"item_id": item.item_id, "source": exc.source, "error": str(exc)}]
            except Exception as exc:  # noqa: BLE001
                error = "".join(traceback.format_exception_only(exc)).strip()
        return [], [{"item_id": item.item_id, "error": error, "attempts": self.retries + 1}]


OnResult = Callable[[Block, BlockResult], None]


def run_local(
    blocks: list[Block],
    worker_kwargs: dict,
    on_result: OnResult,
    workers: int | None = None,
    address: str | None = None,
) -> None:
    """Render every block in this process, in order, the next one rendering while the one
    before is committed."""
    import torch

    ignored = ["--workers"] if workers not in (None, 1) else []  # one is what it runs
    ignored += ["--address"] if address else []
    if ignored:
        log.warning(
            "%s: the local distributor renders in this process, with one worker; use "
            "--distributor ray to spread the work",
            " and ".join(ignored),
        )

    threads = torch.get_num_threads()
    try:
        render_with(BlockWorker(**worker_kwargs), blocks, on_result)
    finally:
        torch.set_num_threads(threads)


def render_with(worker: BlockWorker, blocks: list[Block], on_result: OnResult) -> None:
    """Blocks through one loaded worker, BLOCKS_IN_FLIGHT at a time, results in order."""
    with ThreadPoolExecutor(BLOCKS_IN_FLIGHT, "block") as pool:
        pending: deque = deque()
        for block in blocks:
            pending.append((block, pool.submit(worker, block)))
            if len(pending) >= BLOCKS_IN_FLIGHT:
                done, future = pending.popleft()
                on_result(done, future.result())
        while pending:
            done, future = pending.popleft()
            on_result(done, future.result())


#: What to do about a `--address` that does not answer.
RUN_REMEDY = (
    "give the head's address as `ray start --head` prints it (HOST:6379), or leave --address "
    "and RAY_ADDRESS out to start a local Ray"
)


#: The port each URL form of a Ray address means when it names none.
DEFAULT_PORTS = {"ray": 10001, "http": 80, "https": 443}


def address_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address: HOST:PORT (a head's GCS), ray://HOST[:PORT] (Ray
    Client) or http(s)://HOST[:PORT] (the job server); None for Ray's other forms ("auto")."""
    from urllib.parse import urlsplit

    if "://" in address:
        try:
            url = urlsplit(address)
            port = url.port or DEFAULT_PORTS.get(url.scheme)
        except ValueError:  # a port that is no number: left to Ray's own message
            return None
        return (url.hostname, port) if url.hostname and port else None
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def check_reachable(address: str | None, remedy: str = RUN_REMEDY, timeout_s: float = 5.0) -> None:
    """A Ray address (given, else RAY_ADDRESS) where nothing listens is named at once: Ray
    itself waits 30 to 40 s or more for a GCS or a Ray Client server before it gives up."""
    import socket

    address = address or os.environ.get("RAY_ADDRESS")
    endpoint = address_endpoint(address) if address else None
    if endpoint is None:
        return
    try:
        connection = socket.create_connection(endpoint, timeout=timeout_s)
    except OSError as exc:
        raise AugmentError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); {remedy}"
        ) from None
    with connection:
        if "://" in address and not address.startswith("ray://"):
            return  # the job server's http(s) address: Ray's own client checks it
        answer = grpc_answer(connection)
    if answer.startswith(b"HTTP/") or answer.lower().startswith((b"<!doctype html", b"<html")):
        raise AugmentError(
            f"{address} answers as an HTTP server, not as a Ray cluster's GCS or Ray Client "
            "server (Ray's dashboard and job server are HTTP: `augment submit` takes them as "
            f"http://HOST:8265); {remedy}"
        )
    if len(answer) >= 4 and answer[:4].isascii() and answer[:4].decode().isprintable():
        line = answer.decode("ascii", "replace").splitlines()[0][:60]
        raise AugmentError(f"{address} answers in another protocol than Ray's ({line!r}); {remedy}")
    if not answer and os.environ.get("RAY_USE_TLS", "0") in ("0", ""):
        # Ray then retried for about 12 minutes, after the run had written its output folder
        raise AugmentError(
            f"{address} accepts connections but sent nothing within 2 s, where a Ray GCS or "
            f"Ray Client server answers at once: it is not one (or it hangs); {remedy}"
        )


def grpc_answer(connection, timeout_s: float = 2.0) -> bytes:
    """The first bytes a server sends back to an HTTP/2 client's preface: a Ray GCS or Ray
    Client server (gRPC) sends its SETTINGS frame at once; an HTTP/1 server a status line, and
    other servers their banner, which Ray itself would wait 30-40 s on before giving up.
    Empty when nothing came within `timeout_s`."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    empty_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        connection.settimeout(timeout_s)
        connection.sendall(preface + empty_settings)
        return connection.recv(64)
    except OSError:  # a timeout among them
        return b""


def use_ray_token_if_present() -> None:
    """Ray's own CLI sends the cluster token when one is on this machine; do the same.

    The mode is set for this process and what it starts later (a local Ray's GCS inherits
    it), so Ray's copy of its settings, read once at import, is read again: else a local run
    after a submit in the same process (a notebook) started a GCS that wanted a token its
    driver never sent, and failed with Ray's InvalidAuthToken."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_TOKEN" in os.environ or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")


def connect_ray(address: str | None = None) -> None:
    """Attach to `address` (or RAY_ADDRESS), else start a local Ray with this machine's CPUs."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    check_reachable(address)
    private = address is None and "RAY_ADDRESS" not in os.environ
    given = address or os.environ.get("RAY_ADDRESS")
    if not private:  # a head started with `ray start` wants the token Ray's CLI would send
        use_ray_token_if_present()
    main = threading.current_thread() is threading.main_thread()
    stop_as_interrupt = main and signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            ignore_reinit_error=True,
            logging_level=logging.ERROR if private else logging.WARNING,  # no banner locally
            log_to_driver=False,
        )
    except AuthenticationError:
        raise AugmentError(
            f"the Ray cluster at {given} wants a token: set RAY_AUTH_TOKEN (or copy the head's "
            "~/.ray/auth_token here) and RAY_AUTH_MODE=token"
        ) from None
    except (ValueError, ConnectionError) as exc:  # an address Ray cannot read, or no cluster
        raise AugmentError(
            f"cannot reach a Ray cluster at {given} ({first_line(exc)}); {RUN_REMEDY}"
        ) from None
    if stop_as_interrupt:  # the CLI's (`terminate_as_interrupt`), which ray.init replaced
        # with its own, exiting at once: a SIGTERM while a service started left its folder
        # half made and Ray's agents running
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    if private:
        atexit.register(stop_autoscaler_monitor)  # runs before Ray's own shutdown at exit
    else:  # which cluster this is: `auto` picks whichever this machine runs, said so
        say = log.warning if given == "auto" else log.info
        say("attached to the Ray cluster at %s", ray.get_runtime_context().gcs_address)


def stop_autoscaler_monitor() -> None:
    """Kill this process's private Ray's autoscaler monitor before Ray's own shutdown stops
    it: on SIGTERM it reports its end to the GCS, stopped by then, and Ray waits a whole second
    before killing it (every `augment run` ended a second later). A one-machine Ray has
    nothing to autoscale; a Ray whose internals moved is left to its own shutdown."""
    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        monitors = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []
        for info in monitors:
            info.process.kill()
    except Exception:  # noqa: BLE001 - only a second is at stake
        log.debug("could not stop Ray's autoscaler monitor early", exc_info=True)


@dataclass(frozen=True)
class Placement:
    """What the connected Ray cluster holds, and how Ray actors of ours (batch workers, service
    replicas) are placed on it: a GPU and a CPU each where it has GPUs, else a CPU each."""

    gpus: int
    cpus: int

    @property
    def unit(self) -> str:
        """What the cluster holds, and what a worker takes of it, in words."""
        if self.gpus:
            return f"{self.gpus} GPUs and {self.cpus} CPUs (a worker takes one of each)"
        return f"{self.cpus} CPUs (a worker takes one)"

    @property
    def capacity(self) -> int:
        """How many such actors fit at once."""
        return min(self.gpus, self.cpus) if self.gpus else self.cpus

    @property
    def resources(self) -> dict[str, int]:
        """Each actor's Ray resources."""
        return {"num_gpus": 1, "num_cpus": 1} if self.gpus else {"num_cpus": 1}


def ray_placement() -> Placement:
    """The connected Ray cluster's `Placement`."""
    import ray

    resources = ray.cluster_resources()
    return Placement(int(resources.get("GPU", 0)), int(resources.get("CPU", 0)))


def cluster_placement(address: str | None = None) -> Placement:
    """Attach to the cluster (`connect_ray`) and return its `Placement`, or an error where no
    worker can be placed on it. A run calls it before it writes its output folder when it is
    given a cluster's address."""
    connect_ray(address)
    placement = ray_placement()
    if placement.capacity < 1:
        raise AugmentError(
            f"the Ray cluster has {placement.unit}: no worker can be placed; add a node with "
            "CPUs, or run with --distributor local"
        )
    return placement


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

    placement = cluster_placement(address)
    gpus, capacity = placement.gpus, placement.capacity
    threads = None if gpus else 1  # a CPU worker renders on its one CPU
    unit = placement.unit
    if workers is not None and workers > capacity:  # actors it cannot place would wait forever
        log.warning(
            "--workers %d: this Ray cluster has %s; running %d workers", workers, unit, capacity
        )
    count = max(1, min(workers or capacity, capacity, len(blocks)))
    actor_class = ray.remote(BlockWorker).options(
        **placement.resources, max_restarts=0, max_concurrency=BLOCKS_IN_FLIGHT
    )

    def start_worker():
        return actor_class.remote(**{**worker_kwargs, "threads": threads})

    actors = [start_worker() for _ in range(count)]
    queue = deque(blocks)
    in_flight: dict = {}  # ObjectRef -> (actor, block)
    restarts = 0
    with interrupt_flag() as interrupted:
        try:
            while queue or in_flight:
                if interrupted.is_set():  # raised here, between blocks, never inside Ray
                    raise KeyboardInterrupt
                held = Counter(id(actor) for actor, _ in in_flight.values())
                for worker in workers_to_feed([held[id(a)] for a in actors], len(queue)):
                    block = queue.popleft()
                    in_flight[actors[worker].render.remote(block)] = (actors[worker], block)
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                if not ready:
                    continue
                actor, block = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except RayActorError as exc:
                    if not any(actor is alive for alive in actors):  # already replaced
                        queue.appendleft(block)
                        continue
                    gcs = ray.get_runtime_context().gcs_address
                    if head_gone(gcs):  # not a worker: the cluster (Ray's own end, 60 s on)
                        raise AugmentError(
                            f"the Ray cluster's head ({gcs}) stopped answering: committed "
                            "shards are kept; rerun the same command once a cluster is up"
                        ) from None
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


def head_gone(gcs_address: str, timeout_s: float = 2.0) -> bool:
    """Whether nothing answers at the cluster's GCS address any more: its head was stopped
    or killed. Workers then "died" one after another, each restarted, until Ray's own C++
    ended the process a minute later (exit 1) with no word of the shards kept."""
    import socket

    host, _, port = gcs_address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        return True
    return False


@contextlib.contextmanager
def interrupt_flag():
    """Ctrl-C (or SIGTERM) sets an event that the render loop checks between waits, instead of
    raising wherever the main thread is: a KeyboardInterrupt raised inside Ray's wait could be lost
    there (seen as a run that went on to its end after one Ctrl-C). Outside the main thread
    signals cannot be caught, and the event is never set."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    stops = (signal.SIGINT, signal.SIGTERM)  # SIGTERM stops as Ctrl-C does
    previous = {stop: signal.signal(stop, lambda *_: event.set()) for stop in stops}
    try:
        yield event
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


DISTRIBUTORS = {"local": run_local, "ray": run_ray}
