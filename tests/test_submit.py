"""`augment submit` against a Ray head started by the test: same images as a local run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from augment.config import load_spec
from augment.job import RunOptions, run_job
from tests.conftest import TINY_JOB, images_by_item

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head` in its own temp dir; its processes are killed afterwards."""
    import psutil

    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths
    dashboard, gcs = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run(
        [
            str(BIN / "ray"), "start", "--head", f"--port={gcs}",
            f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=2",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
        ],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:  # the head's processes and their children (renamed 'ray::...', so by ancestry)
        marks = (temp_dir, f":{gcs} ")
        for _ in range(3):  # twice more: a process may still be starting up
            head = [
                p
                for p in psutil.process_iter(["cmdline"])
                if any(m in " ".join(p.info["cmdline"] or []) + " " for m in marks)
            ]
            for process in head + [c for p in head for c in p.children(recursive=True)]:
                try:
                    process.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)


def augment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "augment"), *args], capture_output=True, text=True)


@pytest.mark.slow
def test_submitted_job_matches_a_local_run(ray_head, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "cluster")))
    submitted = augment("submit", str(job), "--address", ray_head)
    assert submitted.returncode == 0, submitted.stderr
    assert "Uploading package" not in submitted.stderr, submitted.stderr  # Ray's INFO chatter
    job_id = re.search(r"submitted (\S+)", submitted.stdout)[1]

    deadline = time.monotonic() + 300
    status = ""
    while time.monotonic() < deadline and not status.endswith(("SUCCEEDED", "FAILED", "STOPPED")):
        time.sleep(2)
        status = augment("status", job_id, "--address", ray_head).stdout.strip()
    logs = augment("logs", job_id, "--address", ray_head).stdout
    assert status.endswith("SUCCEEDED"), logs
    assert "9 images rendered" in logs
    followed = augment("logs", job_id, "--address", ray_head, "--follow")
    assert "9 images rendered" in followed.stdout
    assert "WebSocket closed" not in followed.stderr, followed.stderr  # Ray's INFO chatter

    local = run_job(
        load_spec(job, {"output.dir": str(tmp_path / "local")}),
        RunOptions(distributor="local"),
    )
    cluster, here = images_by_item(tmp_path / "cluster"), images_by_item(local.out_dir)
    assert cluster.keys() == here.keys() and len(here) == 9
    assert all(cluster[key] == here[key] for key in here)


def test_unreachable_cluster_is_a_one_line_error(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    result = augment("submit", str(job), "--address", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot reach a Ray cluster" in result.stderr


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"], ids=["gcs", "client"])
def test_an_address_where_nothing_listens_is_named_at_once(form):
    """HOST:PORT is a head's GCS to Ray, which waits 40 s for one, and ray://HOST:PORT a Ray
    Client server, 30 s or more; nothing there is said now."""
    started = time.monotonic()
    result = augment("status", "raysubmit_1", "--address", form.format(free_port()))
    assert result.returncode == 2 and time.monotonic() - started < 20
    assert result.stderr.count("\n") == 1 and "cannot reach a Ray cluster" in result.stderr


def test_an_address_where_another_server_answers_is_named_at_once():
    """Ray's dashboard port (8265) given as a head's HOST:PORT is a common slip: Ray waited
    40 s on it before its error. An HTTP server, or another protocol's banner, is named now."""
    import http.server
    import threading

    http_server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), http.server.BaseHTTPRequestHandler
    )
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    with socket.create_server(("127.0.0.1", 0)) as banner:

        def greet():
            connection, _ = banner.accept()
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                connection.recv(64)

        threading.Thread(target=greet, daemon=True).start()
        try:
            started = time.monotonic()
            web = f"127.0.0.1:{http_server.server_address[1]}"
            result = augment("status", "raysubmit_1", "--address", web)
            assert result.returncode == 2 and time.monotonic() - started < 20
            assert result.stderr.startswith(
                f"error: {web} answers as an HTTP server, not as a Ray cluster's GCS or Ray "
                "Client server (Ray's dashboard and job server are HTTP: `augment submit` takes "
                "them as http://HOST:8265)"
            )
            other = f"ray://127.0.0.1:{banner.getsockname()[1]}"
            result = augment("status", "raysubmit_1", "--address", other)
            assert result.returncode == 2 and result.stderr.count("\n") == 1
            assert f"{other} answers in another protocol than Ray's ('SSH-2.0-" in result.stderr
        finally:
            http_server.shutdown()


def test_an_address_that_accepts_but_never_answers_is_named_before_out_is_written(tmp_path):
    """Ray retried such a listener for about 12 minutes, after the run had written OUT."""
    import threading

    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    with socket.create_server(("127.0.0.1", 0)) as silent:
        held = []
        threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = augment("run", str(job), "--address", address)
    assert result.returncode == 2 and time.monotonic() - started < 60, result.stderr
    assert f"{address} accepts connections but sent nothing within 2 s" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_head_that_wants_a_token_is_sent_the_one_here_or_said_to_want_it(monkeypatch):
    """`augment run --address` to a head started with `ray start` failed as "cannot reach"
    when the head wanted the token on this machine, which Ray's own CLI sends."""
    import ray
    from ray.exceptions import AuthenticationError

    from augment import distribute
    from augment.errors import AugmentError

    asked = []
    monkeypatch.setattr(distribute, "check_reachable", lambda address: None)
    monkeypatch.setattr(distribute, "use_ray_token_if_present", lambda: asked.append(True))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refuse(**_):
        raise AuthenticationError("Authentication token is missing or incorrect")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(AugmentError, match="the Ray cluster at 10.0.0.1:6379 wants a token"):
        distribute.connect_ray("10.0.0.1:6379")
    assert asked == [True]


def test_an_address_that_answers_no_ray_is_a_users_error(monkeypatch):
    """A HOST:PORT without http:// is taken for a head's GCS; what answers there may not be
    one (an RpcError from Ray): the address is wrong, not augment."""
    import ray.job_submission
    from ray.exceptions import RpcError

    from augment.cluster import job_status
    from augment.errors import AugmentError

    def not_ray(address):
        raise RpcError("RPC error: Received http2 header with status: 404")

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", not_ray)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # set by the client where a token is
    import threading

    with socket.create_server(("127.0.0.1", 0)) as listening:  # something answers, not Ray

        def answer_as_http2():  # a gRPC server's SETTINGS frame, as a GCS sends at once
            connection, _ = listening.accept()
            with connection:
                connection.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                connection.recv(64)

        threading.Thread(target=answer_as_http2, daemon=True).start()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(AugmentError, match=rf"cannot reach a Ray cluster at {address} \(RPC"):
            job_status("raysubmit_1", address)


def test_a_local_run_after_a_submit_in_the_same_process_starts(tmp_path):
    """With a cluster token on this machine, a submit turns Ray's token mode on for the
    process; a local Ray started after it, as a notebook's `ag.run` does, must send
    that token to its own GCS (it failed with Ray's InvalidAuthToken)."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)
    script = """
import ray
from augment.cluster import use_ray_token_if_present
use_ray_token_if_present()  # what submit, status and logs do first
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print("local Ray:", ray.cluster_resources()["CPU"], "CPU")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "local Ray: 1.0 CPU" in result.stdout


def test_a_submitted_spec_names_every_local_file_by_its_absolute_path(write_job, tmp_path):
    """The cluster runs the spec from the project's copy, not beside the job file: a VAE, LoRA,
    scorer or source folder named relative to the job would not be found there."""
    from augment.cluster import portable_spec, project_root

    for name in ("vae", "scorer", "pictures"):
        (tmp_path / name).mkdir()
    (tmp_path / "style.safetensors").write_bytes(b"")
    job = write_job(
        TINY_JOB.replace("  batch_size: 4\n", "  batch_size: 4\n  vae: vae\n  mode: img2img\n"
                         "  loras: [{path: style.safetensors}]\n")
        + "filters:\n  scorer: scorer\nsource:\n  path: pictures\n"
    )  # fmt: skip
    portable = portable_spec(load_spec(job), project_root())
    generation = portable.generation
    assert generation.vae == str(tmp_path / "vae")
    assert generation.loras[0].path == str(tmp_path / "style.safetensors")
    assert portable.filters.scorer == str(tmp_path / "scorer")
    assert portable.source.path == str(tmp_path / "pictures")
    assert generation.model == "builtin:tiny-sd"  # each node builds its own
    assert portable.taxonomy.source == "digits"  # shipped: every node has it


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("404", "no job raysubmit_X on the Ray cluster at"),
        ("html", "did not answer for job raysubmit_X (JSONDecodeError"),
    ],
)
def test_a_wrong_job_id_or_a_server_that_is_not_rays_is_the_users_one_line(answer, expected):
    """Ray's job server answers an unknown id with a 404 (a RuntimeError in Ray's client); a web
    page where a job server should be answers with HTML. Neither is a fault of augment."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from augment.cluster import job_logs, job_status
    from augment.errors import AugmentError

    class JobServer(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            version = {"version": "4", "ray_version": "2", "ray_commit": "x", "session_name": "s"}
            if self.path.startswith("/api/version"):
                code, body, kind = 200, json.dumps(version), "application/json"
            elif answer == "404":
                code, body, kind = 404, "Job raysubmit_X does not exist", "text/plain"
            else:
                code, body, kind = 200, "<html>a dashboard of something else</html>", "text/html"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), JobServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(AugmentError, match=re.escape(expected)):
            job_status("raysubmit_X", address)
        with pytest.raises(AugmentError, match=re.escape(expected)):
            job_logs("raysubmit_X", address)
    finally:
        server.shutdown()


def test_followed_logs_stream_inside_a_running_event_loop(monkeypatch):
    """As in a notebook, whose thread runs an event loop: following a job's log failed there,
    every time, as "the Ray cluster did not answer" (an event loop cannot run in another)."""
    import asyncio

    import augment as ag
    from augment import cluster

    class Client:
        async def lines(self):
            for line in ("rendering\n", "done\n"):
                yield line

        def tail_job_logs(self, job_id):
            return self.lines()

        def get_job_logs(self, job_id):
            return "so far\n"

        def get_job_info(self, job_id):  # a job whose runtime_env never set up: no log
            return SimpleNamespace(
                status="FAILED", message="Failed to download runtime_env file package\nmore"
            )

    monkeypatch.setattr(cluster, "job_client", lambda address: Client())

    async def in_a_notebook():
        return list(ag.logs("raysubmit_X", "http://head:8265", follow=True))

    assert asyncio.run(in_a_notebook()) == ["rendering\n", "done\n"]
    assert ag.logs("raysubmit_X", "http://head:8265") == "so far\n"  # text, not a generator
    status = ag.status("raysubmit_X", "http://head:8265")  # with why, where `logs` holds nothing
    assert status == "FAILED: Failed to download runtime_env file package"
    with pytest.raises(ag.AugmentError, match="address: give the Ray cluster's address as text"):
        ag.status("raysubmit_X", 8265)


def test_a_followed_log_left_early_ends_its_reading_thread(monkeypatch):
    """A caller that stopped reading (a `break`, an interrupted cell) left the thread that
    reads Ray's stream, and its connection, waiting for the job's next line for ever."""
    import asyncio
    import threading

    from augment import cluster

    ended = threading.Event()

    class Client:
        async def lines(self):
            try:
                yield "rendering\n"
                await asyncio.sleep(3600)  # a job that prints nothing more for an hour
                yield "done\n"
            finally:
                ended.set()

        def tail_job_logs(self, job_id):
            return self.lines()

    monkeypatch.setattr(cluster, "job_client", lambda address: Client())
    followed = cluster.follow_job_logs("raysubmit_X", "http://head:8265")
    assert next(followed) == "rendering\n"
    followed.close()
    assert ended.wait(5)
    for thread in threading.enumerate():
        if thread.name == "augment-job-logs":
            thread.join(5)
            assert not thread.is_alive()


def test_ray_keeps_the_commands_sigterm_as_ctrl_c(monkeypatch):
    """ray.init puts in a SIGTERM handler of its own that exits at once: a SIGTERM while
    `augment serve` started left its --write folder half made and Ray's agents running."""
    import signal

    import ray

    from augment import distribute

    def ray_init(**_):  # as Ray's does
        signal.signal(signal.SIGTERM, lambda *a: None)

    monkeypatch.setattr(distribute, "check_reachable", lambda address: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", ray_init)
    monkeypatch.setattr(distribute.atexit, "register", lambda *a: None)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # the CLI's
    try:
        distribute.connect_ray(None)
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a script's own: Ray's is left to it
        distribute.connect_ray(None)
        assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
