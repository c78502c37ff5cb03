"""Ray job submission: send `augment run` of a spec to a cluster, follow its status and logs.

The job runs this project's checkout as its working_dir on the cluster, with a copy of the spec
whose paths the cluster can resolve; the run itself fans out over the cluster's GPUs
(`distribute.run_ray`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from augment.config import JobSpec
from augment.distribute import check_reachable, use_ray_token_if_present
from augment.errors import AugmentError, at_least, first_line
from augment.taxonomy import SHIPPED_TAXONOMIES

#: What to do about a cluster address that does not answer.
SUBMIT_REMEDY = (
    "start one with `ray start --head --dashboard-host 0.0.0.0` and pass http://HEAD:8265"
)

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


def portable_spec(spec: JobSpec, root: Path) -> JobSpec:
    """The spec with paths the cluster can resolve: list files relative to the project (it
    travels with the job), every other local file or folder (models, adapters, scorers, source
    images) absolute, as the nodes see the same paths; the output folder absolute."""
    data = spec.model_dump()
    data["output"]["dir"] = str(Path(spec.output.dir).resolve())
    if spec.taxonomy.source.partition(":")[0] not in ("wordnet", "coco"):  # a list file
        found = Path(spec.paths.taxonomy)
        if found.parent == SHIPPED_TAXONOMIES:  # the cluster's augment ships it too
            data["taxonomy"]["source"] = found.stem
        elif found.is_relative_to(root):
            data["taxonomy"]["source"] = str(found.relative_to(root))
        else:
            raise AugmentError(
                f"taxonomy file {found} is outside the project {root}: copy it into the "
                "project so the cluster receives it"
            )
    for section, key, resolved in local_paths(data, spec.paths):
        if not str(section[key]).startswith("builtin:") and Path(resolved).exists():
            section[key] = str(Path(resolved).resolve())
    if spec.finetune is not None and spec.finetune.out is not None:  # where adapters go
        data["finetune"]["out"] = str(Path(spec.paths.finetuned).parent)
    return spec.model_validate(data)


def local_paths(data: dict, paths) -> list[tuple[dict, str, str]]:
    """(section of the dumped spec, key, resolved path) of every file name a spec holds."""
    g = data["generation"]
    found = [(g, "model", paths.model), (g, "config", paths.config), (g, "vae", paths.vae)]
    if g["controlnet"] is not None:
        found.append((g["controlnet"], "model", paths.controlnet))
    found += [(lora, "path", p) for lora, p in zip(g["loras"], paths.loras, strict=True)]
    inversions = zip(g["textual_inversions"], paths.textual_inversions, strict=True)
    found += [(inversion, "path", p) for inversion, p in inversions]
    found.append((g["mask"], "files", paths.mask_files))
    found.append((data["filters"], "scorer", paths.scorer))
    for name, key, resolved in (
        ("labels", "detector", paths.detector),
        ("segment", "model", paths.segmenter),
        ("source", "path", paths.source),
    ):
        if data.get(name) is not None:
            found.append((data[name], key, resolved))
    if data.get("paste") is not None:
        found.append((data["paste"]["backgrounds"], "path", paths.backgrounds))
    if data.get("finetune") is not None:
        found.append((data["finetune"]["source"], "path", paths.finetune_source))
    return [(section, key, resolved) for section, key, resolved in found if section[key]]


def job_client(address: str):
    check_reachable(address, SUBMIT_REMEDY)
    use_ray_token_if_present()  # before Ray reads its configuration
    from ray.exceptions import AuthenticationError, RpcError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.ERROR)  # no per-file upload chatter
    # nor the upload's line, nor a followed log's "WebSocket closed": their modules set their
    # loggers to INFO themselves
    for module in ("dashboard_sdk", "job.sdk"):
        logging.getLogger(f"ray.dashboard.modules.{module}").setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise AugmentError(
            f"the Ray cluster at {address} wants a token: set RAY_AUTH_TOKEN (or copy the "
            "head's ~/.ray/auth_token here) and RAY_AUTH_MODE=token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError, RpcError) as exc:
        # RpcError: an address without http:// is taken for the head's GCS (ray.init's
        # HOST:6379), and whatever answers there is not one
        raise AugmentError(
            f"cannot reach a Ray cluster at {address} ({first_line(exc).rstrip('.')}); "
            f"{SUBMIT_REMEDY}"
        ) from None


def submit_job(spec: JobSpec, address: str, workers: int | None = None) -> str:
    """Submit `augment run` of `spec` to the cluster at `address`; returns the job id."""
    if workers is not None:
        at_least("workers", workers, 1, " (leave it out to use the whole cluster)")
    root = project_root()
    portable = portable_spec(spec, root)
    # The spec travels in an environment variable and is written into the job's own copy of
    # the project, so nothing is left in the user's checkout.
    # The job runs the `python` first on the head's PATH as `ray start` left it: one that
    # cannot import augment (a virtualenv not activated there) is said so, not a traceback.
    entrypoint = (
        'python -c "import augment.cli" 2>/dev/null || { echo "error: the python on the '
        "cluster's PATH ($(command -v python)) cannot import augment and its requirements: "
        "start Ray from the environment augment is installed in (activate it, or put its bin/ "
        'first on PATH, before ray start)" >&2; exit 2; } && '
        'printf "%s" "$AUGMENT_SUBMITTED_SPEC" > submitted-job.yaml && '
        "python -m augment.cli run submitted-job.yaml"
    )
    if workers is not None:
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


@contextlib.contextmanager
def cluster_answers(job_id: str, address: str):
    """What the job server says of a wrong job id (404), or an answer that is not one of a Ray
    job server's (a web page, a 500), as the user's one line instead of a fault of augment."""
    try:
        yield
    except StopAsyncIteration:  # the end of a followed log
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's RuntimeError, aiohttp's, a JSON decode
        text = first_line(exc)
        if "404" in text or "does not exist" in text:
            raise AugmentError(
                f"no job {job_id} on the Ray cluster at {address}; give the id `augment submit` "
                "printed (raysubmit_...)"
            ) from None
        if isinstance(exc, AugmentError):
            raise
        raise AugmentError(
            f"the Ray cluster at {address} did not answer for job {job_id} "
            f"({type(exc).__name__}: {text}); check the address (the head's dashboard, "
            "http://HEAD:8265) and that the cluster is up"
        ) from None


def job_status(job_id: str, address: str) -> str:
    """The job's status; a failed one's with Ray's reason ("FAILED: Failed to download
    runtime_env file package ..."), which its log may not hold (a job that never started)."""
    client = job_client(address)
    with cluster_answers(job_id, address):
        info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    reason = first_line(Exception(info.message)) if status == "FAILED" and info.message else ""
    return f"{status}: {reason}" if reason else status


def job_logs(job_id: str, address: str) -> str:
    """The job's log text so far."""
    client = job_client(address)
    with cluster_answers(job_id, address):
        return client.get_job_logs(job_id)


def follow_job_logs(job_id: str, address: str) -> Iterator[str]:
    """The job's log lines as they come, until the job ends. Ray's stream is asynchronous: it
    is read on a thread of its own, with its own event loop, since a notebook's thread already
    runs one (an event loop cannot run inside another). A caller that stops reading early
    (`break`, an interrupted cell) ends that thread and its connection too."""
    import asyncio
    import queue
    import threading

    client = job_client(address)
    lines: queue.Queue = queue.Queue(maxsize=1000)
    end = object()
    stopped = threading.Event()
    running: dict = {}  # the reading thread's event loop and task, to cancel them

    async def pump() -> None:
        running.update(loop=asyncio.get_running_loop(), task=asyncio.current_task())
        if stopped.is_set():
            return
        async for line in client.tail_job_logs(job_id):
            while True:  # waits for the reader without holding the loop, so it can be cancelled
                try:
                    lines.put_nowait(line)
                    break
                except queue.Full:
                    await asyncio.sleep(0.05)

    def read() -> None:
        try:
            asyncio.run(pump())
            lines.put(end)
        except asyncio.CancelledError:  # the caller stopped reading
            pass
        except BaseException as exc:  # noqa: BLE001 - carried to the reader, said there
            lines.put(exc)

    reader = threading.Thread(target=read, name="augment-job-logs", daemon=True)
    reader.start()
    try:
        while (line := lines.get()) is not end:
            if isinstance(line, BaseException):
                with cluster_answers(job_id, address):
                    raise line
            yield line
    finally:
        stopped.set()
        if "loop" in running:
            try:
                running["loop"].call_soon_threadsafe(running["task"].cancel)
            except RuntimeError:  # its loop closed already: the stream had ended
                pass
