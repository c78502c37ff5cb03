"""Load on the generation service, measured: `augment bench serve JOB`.

A bounded test on loopback: at each concurrency, that many client threads send `requests`
requests in all (`images` each, every request a new range of prompt variants, so nothing is
served twice), and the latencies (p50, p95), images/s, errors and lost requests are counted.
Then, at the highest concurrency, one replica is killed a third of the way through: Serve
replaces it and the clients' retries must still get every request answered. Last, the batch
path (`augment run` on Ray, as many workers as the service had replicas) renders as many
images, for the same job, once the service is stopped: the two front ends' images/s, one run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from augment.errors import AugmentError, as_list, at_least
from augment.progress import image_progress

log = logging.getLogger(__name__)


@dataclass
class LoadSettings:
    job: str = "jobs/demo.yaml"
    out: str = "load"
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    requests: int = 32  # per concurrency level
    images: int = 4  # per request
    replicas: int = 2
    port: int = 8000
    kill: bool = True  # kill a replica during a last round at the highest concurrency
    batch: bool = True  # and render as many images through the batch path
    url: str | None = None  # load this running service (not started, stopped or compared)

    def __post_init__(self) -> None:
        self.concurrency = as_list(self.concurrency)
        at_least("concurrency", self.concurrency, 1)
        at_least("requests", self.requests, 1)
        at_least("images", self.images, 1)
        at_least("replicas", self.replicas, 1)


@dataclass
class Level:
    """One round of load: what the clients saw."""

    name: str
    concurrency: int
    requests: int
    answered: int  # requests that got all their images
    errors: int  # requests that failed after every retry
    retried: int  # retries the clients made
    images: int
    distinct: int  # distinct item_ids among the images (== images: nothing served twice)
    seconds: float
    p50_s: float | None
    p95_s: float | None
    images_per_s: float
    first_error: str | None = None


#: A load-test request is sent again after this many times the slowest warm-up request (at
#: least REQUEST_TIMEOUT_MIN_S): a request routed to a replica as it was killed was once left
#: unanswered by Serve's proxy, and the client's 300 s default held the whole round.
REQUEST_TIMEOUT_FACTOR = 20
REQUEST_TIMEOUT_MIN_S = 30.0


def run_level(
    url: str,
    name: str,
    concurrency: int,
    requests: int,
    images: int,
    concepts: list[str],
    first_variant: int,
    timeout_s: float,
    during=None,
    advance=None,
) -> Level:
    """`requests` requests from `concurrency` threads, each sent again after `timeout_s`
    without an answer; `during(done)` is called after each answer (the chaos hook),
    `advance(1)` after each request, answered or failed (a progress bar)."""
    from augment.client import Client

    clients = [Client(url, timeout_s, retries=8, backoff=0.5) for _ in range(concurrency)]
    lock = threading.Lock()
    latencies: list[float] = []
    item_ids: list[str] = []
    errors: list[str] = []
    counter = iter(range(requests))

    def client_loop(client: Client) -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            concept = concepts[index % len(concepts)]
            start = first_variant + (index // len(concepts)) * images
            began = time.perf_counter()
            try:
                served = client.generate(concept, images, start=start)
                if len(served) != images:
                    raise AugmentError(f"asked {images} images, got {len(served)}")
            except AugmentError as exc:
                with lock:
                    errors.append(str(exc))
                if advance is not None:
                    advance(1)
                continue
            with lock:
                latencies.append(time.perf_counter() - began)
                item_ids.extend(s.record["item_id"] for s in served)
                answered = len(latencies)
            if during is not None:
                during(answered)
            if advance is not None:
                advance(1)

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client_loop, client) for client in clients]:
            future.result()
    seconds = time.perf_counter() - began
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (None, None)
    return Level(
        name=name,
        concurrency=concurrency,
        requests=requests,
        answered=len(latencies),
        errors=len(errors),
        retried=sum(c.retried for c in clients),
        images=len(item_ids),
        distinct=len(set(item_ids)),
        seconds=round(seconds, 3),
        p50_s=None if p50 is None else round(float(p50), 3),
        p95_s=None if p95 is None else round(float(p95), 3),
        images_per_s=round(len(item_ids) / seconds, 2),
        first_error=errors[0] if errors else None,
    )


def kill_one_replica() -> str:
    """Kill a generation replica as a crash would (no graceful stop); its name."""
    import ray

    from augment.service import replica_actor_names

    names = replica_actor_names()
    if not names:
        raise AugmentError("no generation replica found to kill")
    name, namespace = names[0]
    ray.kill(ray.get_actor(name, namespace=namespace))
    return name


def run_load(settings: LoadSettings) -> dict:
    """Start the service (or use the one at `settings.url`), load it, kill a replica, stop
    it, run the batch path; write OUT/load.json and load.md and return the JSON."""
    from augment.config import load_spec
    from augment.service import ServeOptions, start_service

    spec = load_spec(settings.job)
    out = Path(settings.out)
    device = None
    if settings.url is not None:  # a running service that refuses these requests: said first
        device = serving_device(settings.url, settings.images)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    service = None
    if settings.url is None:  # one that takes requests of this size
        most = max(ServeOptions.max_images, settings.images)
        options = ServeOptions(port=settings.port, replicas=settings.replicas, max_images=most)
        service = start_service(spec, options)
    startup = time.perf_counter() - started
    url = service.url if service else settings.url
    try:
        device = device or serving_device(url, settings.images)  # of the service started
        levels, killed = load_service(url, settings)
        replicas = len(replica_names_after(settings.replicas if service else 1))
    finally:
        if service is not None:
            service.stop()
    batch = None
    if settings.batch and service is not None:  # a service left running holds the machine
        batch = batch_path(spec, sum(level.images for level in levels), settings.replicas)
    summary = {
        "job": spec.name,
        "model": spec.generation.model,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or "cpu"},
        "device": device,
        "replicas": settings.replicas if service else replicas,
        "startup_s": round(startup, 1) if service else None,
        "settings": asdict(settings),
        "levels": [asdict(level) for level in levels],
        "killed": killed,
        "replicas_after": replicas,
        "batch": batch,
    }
    (out / "load.json").write_text(json.dumps(summary, indent=2))
    (out / "load.md").write_text("\n".join(load_lines(summary)) + "\n")
    return summary


def serving_device(url: str, images: int) -> str:
    """The device of the service at `url`; an error if it refuses requests of `images`."""
    from augment.client import Client

    health = Client(url).health()
    if images > health["max_images"]:  # every request would be refused
        raise AugmentError(
            f"--images {images}: the service at {url} serves at most {health['max_images']} "
            "images a request; ask for that many or fewer, or restart it with a larger "
            "--max-images"
        )
    return health["device"]


def load_service(url: str, settings: LoadSettings) -> tuple[list[Level], str | None]:
    """Warm every replica, then each round of load; the replica killed, if any."""
    from augment.client import Client

    client = Client(url)
    concepts = [c["name"] for c in client.concepts()]
    # Each round past the last: no item twice. Past the job's own plan, except on a service
    # that writes the job's dataset (--write), which serves the plan's items only: there
    # they are the job's own, written once.
    variant = 0 if client.health().get("writes_to") else 1000
    slowest = 0.0
    for _ in range(settings.replicas * 2):
        began = time.perf_counter()
        client.generate(concepts[0], settings.images, start=variant)
        slowest = max(slowest, time.perf_counter() - began)
        variant += settings.images
    timeout_s = max(REQUEST_TIMEOUT_MIN_S, REQUEST_TIMEOUT_FACTOR * slowest)
    killed: str | None = None
    kill_lock = threading.Lock()

    def kill_when(answered: int) -> None:
        nonlocal killed
        with kill_lock:
            if answered >= settings.requests and killed is None:
                killed = kill_one_replica()

    rounds = [(f"c={c}", c, settings.requests, None) for c in settings.concurrency]
    if settings.kill:  # three times as long, the kill a third of the way through
        highest = max(settings.concurrency)
        rounds.append((f"c={highest}, a replica killed", highest, 3 * settings.requests, kill_when))
    levels: list[Level] = []
    total = sum(requests for _, _, requests, _ in rounds)
    with image_progress(total, "load test", unit="req") as advance:
        for name, concurrency, requests, during in rounds:
            level = run_level(
                url,
                name,
                concurrency,
                requests,
                settings.images,
                concepts,
                variant,
                timeout_s,
                during,
                lambda n: advance(n, note=name),  # noqa: B023 - used within this round
            )
            variant += requests * settings.images
            levels.append(level)
            log.info(  # the table at the end says it all; this is for --debug
                "%s: p50 %s s, p95 %s s, %.1f images/s, %d errors",
                name,
                level.p50_s,
                level.p95_s,
                level.images_per_s,
                level.errors,
            )
    return levels, killed


def batch_path(spec, images: int, workers: int) -> dict:
    """`augment run` of `images` of the job's items on Ray, its rendering images/s: the same
    renders, labels and filter as served, without the exports or pasted canvases."""
    from augment.config import load_spec
    from augment.job import RunOptions, run_job

    plain = load_spec(spec, {"limit": images, "output.formats": ["parquet"]})
    with tempfile.TemporaryDirectory() as folder:
        plain = plain.model_copy(update={"paste": None}).with_output_dir(folder)
        result = run_job(plain, RunOptions(distributor="ray", workers=workers))
    return {
        "workers": workers,
        "images": result.rendered,
        "seconds": round(result.rendering_seconds, 3),
        "images_per_s": round(result.rendered / result.rendering_seconds, 2),
    }


def replica_names_after(wanted: int, wait_s: float = 60.0) -> list:
    """The replicas once Serve has replaced a killed one (waits up to `wait_s`)."""
    from augment.service import replica_actor_names

    deadline = time.monotonic() + wait_s
    while True:
        names = replica_actor_names()
        if len(names) >= wanted or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def load_lines(summary: dict) -> list[str]:
    """The load test as a markdown table, service rounds then the batch path."""
    lines = [
        f"Service load on {summary['job']} ({summary['model']}), {summary['replicas']} "
        f"replica(s) on {summary['device']}, {summary['machine']['cpus']} CPUs; "
        f"{summary['settings']['images']} images a request.",
        "",
        "| front end | requests answered | p50 s | p95 s | images/s | errors | retries |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level in summary["levels"]:
        lines.append(
            f"| service, {level['name']} | {level['answered']} of {level['requests']} | "
            f"{level['p50_s']} | {level['p95_s']} | {level['images_per_s']} | "
            f"{level['errors']} | {level['retried']} |"
        )
    batch = summary["batch"]
    if batch:
        lines.append(
            f"| batch path (augment run, {batch['workers']} Ray workers), {batch['images']} "
            f"images | | | | {batch['images_per_s']} | | |"
        )
    if summary["killed"]:
        lines += [
            "",
            f"Killed {summary['killed']}; replicas afterwards: {summary['replicas_after']}.",
        ]
    return lines
