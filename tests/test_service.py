"""`augment serve`: the batch path's engine behind HTTP, on loopback, with the digits model on a
CPU. One service for the module (Serve's start-up dominates): it writes what it serves."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

import augment as ag
from augment.config import load_spec
from augment.errors import AugmentError, RequestError
from augment.provenance import read_png_chunks
from augment.records import RECORD_SCHEMA
from tests.conftest import REPO, images_by_item

pytest.importorskip("ray.serve")


def served_spec():
    """The demo job without its exports and pasted canvases (not what is served)."""
    spec = load_spec(REPO / "jobs" / "demo.yaml", {"output.formats": ["parquet"]})
    return spec.model_copy(update={"paste": None})


@contextlib.contextmanager
def serving(handler) -> Iterator[str]:
    """A stand-in web server on a free loopback port, answering with `handler` (an
    http.server request handler) until the block ends; yields its url."""
    import threading
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from augment.service import ServeOptions, start_service

    folder = tmp_path_factory.mktemp("service")
    spec = served_spec()
    options = ServeOptions(port=free_port(), replicas=2, write=str(folder / "served"))
    service = start_service(spec, options)
    yield SimpleNamespace(url=service.url, spec=spec, folder=folder, written=folder / "served")
    service.stop()


def post(url: str, body: bytes, path: str = "/generate", method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(
        url + path, body, {"Content-Type": "application/json"}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_served_image_is_the_batch_runs_image_byte_for_byte(served):
    client = ag.Client(served.url)
    images = client.generate("seven", n=2)
    batch_out = served.folder / "batch"
    batch = load_spec(served.spec, {"limit": 20})  # variants 0 and 1 of every concept
    ag.run(batch, out=batch_out, distributor="local")
    rendered = images_by_item(batch_out)
    assert [image.record["concept_name"] for image in images] == ["seven"] * 2
    assert [image.png for image in images] == [rendered[i.record["item_id"]] for i in images]
    shard = ag.read(batch_out).set_index("item_id")
    for image in images:
        record = image.record
        assert list(record) == RECORD_SCHEMA.names  # the columns of a shard row
        row = shard.loc[record["item_id"]]
        columns = ("prompt", "seed", "settings", "model_hash", "concept_score", "phash", "thumb")
        for column in columns:
            assert record[column] == row[column], column
        provenance = json.loads(read_png_chunks(image.png)["augment"])
        assert provenance["item_id"] == record["item_id"] and provenance["job"] == "demo"


def test_served_images_are_written_once_and_a_batch_run_there_skips_them(served, tmp_path):
    """While the service writes its folder, a batch run there is refused (two writers mixed
    their shards); on the folder it wrote, the batch run renders only what was not served."""
    client = ag.Client(served.url)
    first = client.generate("three", n=2)
    again = client.generate("three", n=2)  # the same items: served again, not written again
    assert [i.png for i in first] == [i.png for i in again]
    frame = ag.read(served.written)
    assert frame.item_id.is_unique
    assert {i.record["item_id"] for i in first} <= set(frame.item_id)
    spec = load_spec(served.spec, {"limit": 20})
    planned = set(ag.plan(spec).item_id)
    already = planned & set(frame.item_id)
    assert already  # three's variants 0 and 1 at least
    with pytest.raises(AugmentError, match="is being written by another augment process"):
        ag.run(spec, out=served.written, distributor="local")
    folder = tmp_path / "served"
    shutil.copytree(served.written, folder)  # what the service had written, as after its stop
    result = ag.run(spec, out=folder, distributor="local")
    assert (result.skipped, result.rendered) == (len(already), 20 - len(already))
    after = ag.read(folder)
    assert after.item_id.is_unique and planned <= set(after.item_id)
    coco = json.loads(ag.export(folder, ["coco"])["coco"].read_text())
    assert coco["info"]["synthetic"] and coco["images"]  # a dataset like any run's


def test_a_served_folder_is_filtered_again_like_a_run(served, tmp_path):
    """`augment filter` on what `serve --write` wrote, which has no plan.parquet: the job's own
    plan orders the duplicate pass, as a batch run's would."""
    ag.Client(served.url).generate("four", n=3)
    folder = tmp_path / "served"
    shutil.copytree(served.written, folder)  # the service goes on writing its own
    (folder / "plan.parquet").unlink(missing_ok=True)  # a batch run there would have written it
    before = ag.read(folder)
    result = ag.refilter(folder, min_concept_score=0.9)
    after = ag.read(folder)
    assert sorted(after.item_id) == sorted(before.item_id)
    assert (after.filtered == (after.concept_score < 0.9)).all()
    assert result.after["filtered"] == int(after.filtered.sum())


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"concept": "eleven"}', 404, "unknown concept 'eleven'"),
        (b'{"concept": "seven", "n": 0}', 400, "n must be between 1 and 64, got 0"),
        (b'{"concept": "seven", "n": 65}', 400, "n must be between 1 and 64, got 65"),
        (b'{"concept": "seven", "n": "many"}', 400, "n: "),
        (b"concept=seven", 400, "not valid JSON"),
        (b"", 400, 'the body must be a JSON object such as {"concept": "seven", "n": 4}'),
        (b'["seven"]', 400, "the body must be a JSON object such as"),
        (b'{"concept": "seven", "size": 2}', 400, "unknown field 'size'"),
        (b'{"n": 2}', 400, "name a concept"),
        (b'{"concept": "seven", "prompt": "a {nme}"}', 400, "unknown placeholder {nme}"),
        (b'{"concept": "seven", "overrides": {"model": "x"}}', 400, "model cannot be set"),
        (b'{"concept": "seven", "overrides": {"guidance_scale": 2}}', 400, "--write"),
        (b'{"concept": "seven", "seed": 5}', 400, "--write"),
        (b'{"concept": "seven", "prompt": "a cat"}', 400, "the job's prompts (--write)"),
    ],
)
def test_a_bad_request_is_refused_with_4xx_and_one_line_and_the_service_keeps_serving(
    served, body, status, words
):
    code, answer = post(served.url, body)
    assert code == status
    assert list(answer) == ["error"]  # the one shape of every error
    assert words in answer["error"] and "\n" not in answer["error"]
    assert len(ag.Client(served.url).generate("one", n=1)) == 1


@pytest.mark.parametrize(
    "method, path, status, words",
    [
        ("GET", "/nope", 404, "no GET /nope here; this service answers POST /generate, GET /c"),
        ("GET", "/generate", 405, "/generate takes POST, not GET (POST /generate, GET /concepts"),
        ("POST", "/concepts", 405, "/concepts takes GET, not POST"),
    ],
)
def test_a_wrong_route_or_method_answers_in_the_services_error_shape(
    served, method, path, status, words
):
    """FastAPI answered these as {"detail": "Not Found"}, which callers of the service's
    {"error": ...} read as nothing."""
    code, answer = post(served.url, b"{}" if method == "POST" else None, path, method)
    assert (code, list(answer)) == (status, ["error"])
    assert answer["error"].startswith(words) and "\n" not in answer["error"]
    with pytest.raises(RequestError, match=words.replace("(", r"\(")) as refused:
        ag.Client(served.url).call(method, path, {} if method == "POST" else None)
    assert refused.value.status == status


def test_a_fault_of_the_service_answers_500_in_the_same_shape():
    """A bug (not the request's) reaches the caller as one line to retry, not Starlette's
    plain text; the traceback goes to the replica's log."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from augment.service import answer_errors_in_one_shape

    app = FastAPI()
    answer_errors_in_one_shape(app)

    @app.post("/generate")
    def generate(request: dict) -> dict:
        if request["concept"] == "eleven":
            raise RequestError("unknown concept 'eleven'", 404)
        raise RuntimeError("a bug\nin two lines")

    client = TestClient(app)
    answers = [
        client.post("/generate", json={"concept": "seven"}),
        client.post("/generate", json={"concept": "eleven"}),
        client.post("/generate", json=["seven"]),
        client.get("/nope"),
    ]
    assert [a.status_code for a in answers] == [500, 404, 400, 404]
    assert all(list(a.json()) == ["error"] for a in answers)
    assert answers[0].json()["error"] == (
        "the service failed on POST /generate (RuntimeError: a bug); retry, and if it fails "
        "again, the replica's log has the traceback"
    )


def test_a_body_not_sent_as_json_is_told_to_say_so():
    """`curl -d '{"concept": "seven"}'` sends a form: the service answered that the body had
    to be a JSON object such as {"concept": "seven", ...}, which it was."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from augment.service import GenerateRequest, answer_errors_in_one_shape

    app = FastAPI()
    answer_errors_in_one_shape(app)

    def generate(request) -> dict:
        return {"concept": request.concept}

    generate.__annotations__["request"] = GenerateRequest  # not a string: this module's
    app.post("/generate")(generate)  # annotations are, and FastAPI would not find it here
    client = TestClient(app)
    body = '{"concept": "seven", "n": 1}'
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    refused = client.post("/generate", content=body, headers=form)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(
        "the body was sent as application/x-www-form-urlencoded, not JSON; send it with the "
        "header Content-Type: application/json"
    )
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    assert client.post("/generate", content=body, headers=json_type).json() == {"concept": "seven"}
    empty = client.post("/generate")  # no body at all: what it lacks is said, as before
    assert empty.json()["error"].startswith("the body must be a JSON object")
    wrong = client.post("/generate", content='{"concept": 7}', headers=json_type)
    assert wrong.json()["error"].startswith("concept:")  # JSON with a wrong field: said as before


def test_the_client_reads_an_error_in_the_services_shape_or_fastapis():
    """{"error": ...} is the service's; {"detail": ...} a FastAPI server's own (another
    version, a proxy in front)."""
    import io
    from urllib.error import HTTPError

    from augment.client import error_text

    def answer(body: bytes) -> HTTPError:
        return HTTPError("http://h/generate", 422, "Unprocessable", {}, io.BytesIO(body))

    assert error_text(answer(b'{"error": "n must be between 1 and 64, got 0"}')) == (
        "n must be between 1 and 64, got 0"
    )
    assert error_text(answer(b'{"detail": "Not Found"}')) == "Not Found"
    assert error_text(answer(b"upstream\nconnect error")) == "upstream connect error"
    assert error_text(answer(b"")) == "Unprocessable"


def test_the_client_raises_the_services_reason(served):
    with pytest.raises(RequestError, match="unknown concept 'eleven'"):
        ag.Client(served.url).generate("eleven")


def test_health_concepts_and_spec_describe_the_job(served):
    client = ag.Client(served.url)
    health = client.health()
    assert health["status"] == "ok" and health["batch_size"] == 50
    assert health["writes_to"] == str(served.written)
    assert health["overridable"] == []  # a --write service refuses every override
    assert health["max_size"] == 1024  # the demo's 32 px, doubled, is below the floor
    names = [c["name"] for c in client.concepts()]
    assert len(names) == 10 and "seven" in names
    assert client.spec()["generation"]["model"] == "builtin:digits"


def test_served_images_stream_into_a_dataloader_without_repeating(served):
    import torch
    from torchvision.transforms.functional import to_tensor

    dataset = ag.ServedImages(
        served.url, ["zero", "eight"], per_request=2, images=6, transform=to_tensor, start=40
    )
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=3))
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches]).tolist()
    assert images.shape == (6, 3, 32, 32)
    assert labels == [0, 0, 1, 1, 0, 0]  # the concepts in turn, per_request at a time
    assert len({image.numpy().tobytes() for image in images}) == 6
    unknown = ag.ServedImages(served.url, ["zero", "eleven"])
    with pytest.raises(AugmentError, match=r"'eleven' is not a concept of the service at .*zero"):
        next(iter(unknown))


def test_the_load_test_answers_every_request_and_a_killed_replica_is_replaced(served, tmp_path):
    """Last in the module: it kills one of the service's two replicas (Serve starts another;
    `augment bench serve` waits for it, a running service's load test does not)."""
    with pytest.raises(
        AugmentError, match=f"--images 65: the service at {served.url} serves at most 64"
    ):
        ag.bench_serve(REPO / "jobs" / "demo.yaml", tmp_path / "refused", url=served.url, images=65)
    assert not (tmp_path / "refused").exists()
    summary = ag.bench_serve(
        REPO / "jobs" / "demo.yaml",
        tmp_path,
        url=served.url,
        concurrency=[1, 4],
        requests=4,
        images=2,
        replicas=2,
    )
    levels = summary["levels"]
    assert [level["name"] for level in levels] == ["c=1", "c=4", "c=4, a replica killed"]
    assert all(level["errors"] == 0 for level in levels)
    assert [level["answered"] for level in levels] == [4, 4, 12]
    assert all(level["distinct"] == level["images"] == 2 * level["answered"] for level in levels)
    assert summary["killed"].startswith("SERVE_REPLICA") and summary["replicas_after"] >= 1
    assert "| service, c=4 |" in (tmp_path / "load.md").read_text()


def test_serve_refuses_a_job_it_cannot_serve_and_a_busy_port_before_starting(tmp_path, capsys):
    from tests.conftest import cli, error_line

    demo = REPO / "jobs" / "demo.yaml"
    job = tmp_path / "interpolate.yaml"
    job.write_text(demo.read_text().replace("mode: txt2img", "mode: interpolate"))
    code, _, err = cli(capsys, "serve", job)
    assert code == 2 and "augment serve renders txt2img jobs" in error_line(err)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli(capsys, "serve", demo, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in error_line(err)
    code, _, err = cli(capsys, "serve", demo, "--overridable", "model")
    assert code == 2 and "model cannot change per request" in error_line(err)
    code, _, err = cli(capsys, "serve", demo, "--port", "70000")
    assert code == 2 and "port must be at most 65535" in error_line(err)
    code, _, err = cli(capsys, "serve", demo, "--write", "")  # an unset $OUT: not the cwd
    assert code == 2 and "argument --write: an empty name" in err
    code, _, err = cli(capsys, "serve", demo, "--replicas", "64")  # Serve would wait forever
    assert code == 2 and "room for" in error_line(err) and "ask for at most" in error_line(err)
    from augment.service import ServeOptions

    assert ServeOptions(overridable=("none",)).overridable == ()  # as --help offers


def test_one_batch_renders_each_item_once_per_seed_and_settings():
    """Callers' items meet in one batch: an item two callers want renders once, the same item
    under another job seed or other settings is another image (no Serve needed here)."""
    import torch

    from augment.distribute import BlockWorker
    from augment.service import GenerateRequest, GenerationService, ServeOptions, concept_index
    from augment.service import order_for as make_order

    spec, options = served_spec(), ServeOptions()
    index = concept_index(ag.concepts(spec))
    threads = torch.get_num_threads()
    replica = SimpleNamespace(spec=spec, worker=BlockWorker(spec, ["seven"], None))
    torch.set_num_threads(threads)

    def order(**fields):
        return make_order(spec, index, GenerateRequest(concept="seven", n=2, **fields), options)

    plain, reseeded, fewer_steps = (
        order(),
        order(seed=11),
        order(overrides={"num_inference_steps": 5}),
    )
    wanted = [(item, o) for o in (plain, plain, reseeded, fewer_steps) for item in o.items]
    render_wanted = GenerationService.func_or_class.render_wanted
    records = render_wanted(replica, wanted)
    png = [record["image"]["bytes"] for record in records]
    assert png[0:2] == png[2:4]  # the same items, asked twice
    assert records[0] is records[2]  # rendered once
    assert len(set(png[0:2] + png[4:6] + png[6:8])) == 6
    assert [r["item_id"] for r in records[4:6]] == [r["item_id"] for r in records[0:2]]
    assert {r["steps"] for r in records[6:8]} == {5} and records[0]["steps"] == 25


def test_a_request_far_into_the_variants_makes_the_batch_plans_items_without_building_it_all():
    from augment.job import plan_for
    from augment.service import GenerateRequest, ServeOptions, concept_index, order_for

    spec = served_spec()
    index = concept_index(ag.concepts(spec))
    order = order_for(spec, index, GenerateRequest(concept="Seven", n=3, start=200), ServeOptions())
    sevens = [item for item in plan_for(spec) if item.concept_name == "seven"]
    assert order.items == sevens[200:203]
    far = GenerateRequest(concept="seven.n.01", n=2, start=10**6)
    assert [i.variant for i in order_for(spec, index, far, ServeOptions()).items] == [
        10**6,
        10**6 + 1,
    ]
    # A service writing the job's dataset serves its plan's items only: beyond them, OUT held
    # images of no plan, which a later run into it could not account for.
    writing = ServeOptions(write="out/served")
    assert (
        len(order_for(spec, index, GenerateRequest(concept="seven", n=2, start=338), writing).items)
        == 2
    )
    with pytest.raises(
        RequestError, match=r"variants 339 to 340 are not in it; ask within 0 to 339"
    ):
        order_for(spec, index, GenerateRequest(concept="seven", n=2, start=339), writing)


def test_a_concept_is_found_as_written_before_any_case():
    """ "apple" asked for Apple, the first of Apple and apple; a name that matches several only
    in another case is refused, not given the first of them."""
    from augment.errors import RequestError
    from augment.service import concept_index
    from augment.taxonomy.concept import Concept

    index = concept_index([Concept("x1", "Xerox", 1), Concept("x2", "xerox", 2)])
    assert index.find("xerox").id == "x2" and index.find("Xerox").id == "x1"
    assert index.find("x2").name == "xerox" and index.find("X1").name == "Xerox"
    with pytest.raises(RequestError, match=r"'XEROX' names several in any case \(Xerox \(x1\)"):
        index.find("XEROX")
    assert index.find("zerox") is None
    # the client's stream finds them alike (it refused Apple and apple as "the same concept")
    known = [{"id": "a1", "name": "Apple"}, {"id": "a2", "name": "apple"}]
    stream = ag.ServedImages("http://127.0.0.1:1", ["apple", "Apple"])
    assert stream.concept_keys(known) == ["apple", "Apple"]  # asked for as given
    with pytest.raises(AugmentError, match=r"'APPLE' names several concepts in any case"):
        ag.ServedImages("http://127.0.0.1:1", ["APPLE"]).concept_keys(known)
    # one name, two concepts (WordNet's two griffons): the first was served, silently
    cranes = [Concept("crane_bird", "crane", 1), Concept("crane_machine", "crane", 2)]
    with pytest.raises(RequestError, match=r"'crane' names several \(crane \(crane_bird\), cr"):
        concept_index(cranes).find("crane")
    assert concept_index(cranes).find("crane_machine").category_id == 2
    known = [{"id": c.id, "name": c.name} for c in cranes]
    with pytest.raises(AugmentError, match=r"'crane' names several concepts \(crane \(crane_b"):
        ag.ServedImages("http://127.0.0.1:1", ["crane"]).concept_keys(known)


def test_a_request_for_a_size_past_the_services_largest_is_refused_before_it_renders():
    """A 100000 px side would have tried to allocate its latents on the replica."""
    from augment.service import GenerateRequest, ServeOptions, concept_index, order_for

    spec = served_spec()  # 32 x 32
    index = concept_index(ag.concepts(spec))

    def order(options: ServeOptions, **overrides):
        request = GenerateRequest(concept="seven", overrides=overrides)
        return order_for(spec, index, request, options)

    default = ServeOptions()
    assert default.largest_size(spec) == 1024  # twice 32 is below the floor
    assert order(default, height=1024, width=1024).settings.height == 1024
    with pytest.raises(RequestError, match=r"height 1032 is above this service's largest size, "):
        order(default, height=1032)
    with pytest.raises(RequestError, match=r"width 100000 is above .* ask for at most 1024$"):
        order(default, width=100000)
    with pytest.raises(RequestError, match="height: Value error, must be a multiple of 8"):
        order(default, height=1020)  # what the pipeline needs, still checked first
    narrow = ServeOptions(max_size=64)
    assert order(narrow, height=64, width=48).settings.width == 48
    with pytest.raises(RequestError, match="width 72 is above this service's largest size, 64"):
        order(narrow, width=72)
    big_job = spec.model_copy(
        update={"generation": spec.generation.model_copy(update={"height": 768, "width": 640})}
    )
    assert default.largest_size(big_job) == 1536  # twice the longer side, past the floor
    with pytest.raises(AugmentError, match="max_size must be at least 8, got 0"):
        ServeOptions(max_size=0)


def test_serve_refuses_a_largest_size_below_the_jobs_own(capsys):
    from tests.conftest import cli, error_line

    code, _, err = cli(capsys, "serve", REPO / "jobs" / "demo.yaml", "--max-size", "16")
    assert code == 2
    assert (  # max_size, or --max-size where the CLI names the option as typed
        "size 16 is below the job's own size (32x32), which every request renders unless it "
        "overrides it; give at least 32" in error_line(err)
    )


def test_a_replica_that_cannot_load_its_model_is_named_by_its_own_error():
    """Serve only says that the deployment failed; the replica's traceback in its status holds
    the error a person can act on (seen with a VAE folder that holds no weights)."""
    from augment.service import replica_error

    traceback = (
        'Traceback (most recent call last):\n  File "augment/generate/pipelines.py", line 290, '
        "in load_vae\n    raise ModelError(\naugment.errors.ModelError: generation.vae: cannot "
        "load a VAE (AutoencoderKL) from /vae: Error no file named diffusion_pytorch_model.bin"
    )
    assert replica_error(["", traceback]) == (
        "generation.vae: cannot load a VAE (AutoencoderKL) from /vae: Error no file named "
        "diffusion_pytorch_model.bin"
    )
    assert replica_error(["ValueError: something of Ray's own"]) is None


def test_a_write_folder_of_another_run_is_refused_with_advice_serve_can_follow(tmp_path):
    """`augment serve` has --write, not --out or --force."""
    from augment.errors import OutputError
    from augment.job import RunOptions, run_job
    from augment.service import ServedWriter
    from tests.conftest import TINY_JOB

    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    run_job(load_spec(job, {"limit": 1}), RunOptions(distributor="local"))
    other = load_spec(job, {"seed": 8})
    with pytest.raises(OutputError, match=r"seed 7 then, 8 now\); write to another folder \(--w"):
        ServedWriter.func_or_class(other, str(tmp_path / "out"))


def test_a_client_without_a_service_says_what_is_missing():
    """A url without its scheme, or one where nothing answers, is the user's error in words."""
    from augment.errors import AugmentError

    with pytest.raises(AugmentError, match=r"service url '127.0.0.1:8000': give it with its"):
        ag.Client("127.0.0.1:8000")
    nobody = ag.Client(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(AugmentError, match=r"concepts failed once: .*is `augment serve` running"):
        nobody.concepts()


def test_a_client_that_waits_too_little_is_told_so_not_that_nothing_runs():
    """A service rendering a large request for longer than the client's timeout was reported as
    "is `augment serve` running there?", which it was."""
    import time as clock
    from http.server import BaseHTTPRequestHandler

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            clock.sleep(0.5)

        def log_message(self, *args):
            pass

    with serving(Slow) as url, pytest.raises(AugmentError) as slow:
        ag.Client(url, timeout=0.1, retries=0).concepts()
    assert "no answer within 0.1 s" in str(slow.value)
    assert "Client(timeout=...)" in str(slow.value) and "running there" not in str(slow.value)


def test_a_client_pointed_at_another_web_server_says_so_in_one_line():
    """A notebook's URL of a Jupyter or a dashboard: a web page, not the service's JSON."""
    from http.server import BaseHTTPRequestHandler

    class WebPage(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            page = b"<!DOCTYPE html>\n<html>\n<body>Jupyter</body>\n</html>\n"
            self.send_response(200 if self.path == "/concepts" else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    with serving(WebPage) as url:
        client = ag.Client(url, retries=0)
        with pytest.raises(AugmentError, match="did not answer as an augment service"):
            client.concepts()
        with pytest.raises(RequestError) as refused:
            client.health()
        assert "\n" not in str(refused.value) and "Jupyter" in str(refused.value)
    with pytest.raises(AugmentError, match="retries must be at least 0, got -1"):
        ag.Client("http://127.0.0.1:1", retries=-1)


def test_served_images_take_one_concept_as_a_list_and_refuse_one_given_twice():
    """ "three" was streamed as the concepts t, h, r, e, e; ["three", "three"] gave the same
    images under two labels."""
    assert ag.ServedImages("http://127.0.0.1:1", "three").concepts == ["three"]
    with pytest.raises(AugmentError, match="concepts: 'three' is given twice"):
        ag.ServedImages("http://127.0.0.1:1", ["three", "three"])
    with pytest.raises(AugmentError, match="per_request must be a whole number at least 1"):
        ag.ServedImages("http://127.0.0.1:1", per_request="8")


@pytest.fixture
def fake_service():
    """A stand-in for `augment serve` (its HTTP answers only): concepts zero, three and eight;
    each image one grey pixel whose level is its prompt variant. Every third variant of three
    is filtered and variant 4 is black; every image of zero is filtered. `variants`: the
    prompt variants it serves (None: any; a `serve --write` service's images_per_concept)."""
    import base64
    import io
    from http.server import BaseHTTPRequestHandler

    from PIL import Image

    concepts = [
        {"id": f"{name}.n.01", "name": name, "synset": f"{name}.n.01", "category_id": i}
        for i, name in enumerate(["zero", "three", "eight"])
    ]
    asked: list[dict] = []

    def png(level: int) -> str:
        buffer = io.BytesIO()
        Image.new("L", (1, 1), level % 256).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    class Service(BaseHTTPRequestHandler):
        def answer(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/health":
                self.answer({"status": "ok", "variants": fake.variants})
            else:
                self.answer(concepts)

        def do_POST(self):  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(request)
            if fake.variants is not None and request["start"] + request["n"] > fake.variants:
                self.send_response(400)  # as a --write service refuses variants past its plan
                self.end_headers()
                return
            asked_for = request["concept"].lower()  # an id, name or synset, as the service
            name = next(c["name"] for c in concepts if asked_for in (c["id"], c["name"]))
            variants = range(request["start"], request["start"] + request["n"])
            records = [
                {
                    "concept_name": name,
                    "item_id": f"{name}-{v}",
                    "filtered": name == "zero" or (name == "three" and v % 3 == 0),
                    "black": name == "three" and v == 4,
                    "nan": False,
                }
                for v in variants
            ]
            self.answer({"images": [png(v) for v in variants], "records": records})

        def log_message(self, *args):
            pass

    with serving(Service) as url:
        fake = SimpleNamespace(url=url, asked=asked, variants=None)
        yield fake


def levels(stream) -> list[tuple[int, int]]:
    """(variant, label) of each streamed image: its grey level is its variant."""
    return [(image.getpixel((0, 0))[0], label) for image, label in stream]


def test_served_images_end_where_a_writing_services_dataset_ends(fake_service, caplog):
    """A `serve --write` service refuses variants past its job's images_per_concept: a stream
    without an end died there with that refusal, and one asked for more, too."""
    fake_service.variants = 5
    assert levels(ag.ServedImages(fake_service.url, "eight", per_request=2)) == [
        (v, 0) for v in range(5)
    ]
    assert [(a["start"], a["n"]) for a in fake_service.asked] == [(0, 2), (2, 2), (4, 1)]
    with caplog.at_level("WARNING", logger="augment"):
        assert len(list(ag.ServedImages(fake_service.url, "eight", per_request=2, images=8))) == 5
    assert "ends after 5 of the 8 asked for" in caplog.text


def test_served_images_skip_flagged_images_and_count_them(fake_service):
    """A filtered or black image reached the training loop as a good example of its label."""
    stream = ag.ServedImages(fake_service.url, ["three.n.01", "Eight"], per_request=4, images=12)
    assert levels(stream) == [
        *[(1, 0), (2, 0)],  # three 0-3: 0 and 3 filtered
        *[(0, 1), (1, 1), (2, 1), (3, 1)],
        *[(5, 0), (7, 0)],  # three 4-7: 4 black (and not filtered), 6 filtered
        *[(4, 1), (5, 1), (6, 1), (7, 1)],
    ]
    assert stream.skipped == {"filtered": 3, "black": 1}
    assert [(a["concept"], a["start"], a["n"]) for a in fake_service.asked] == [
        ("three.n.01", 0, 4),
        ("Eight", 0, 4),
        ("three.n.01", 4, 4),
        ("Eight", 4, 4),
    ]
    kept = ag.ServedImages(fake_service.url, "three", per_request=4, images=6, include_flagged=True)
    assert levels(kept) == [(v, 0) for v in range(6)] and not kept.skipped
    with pytest.raises(AugmentError, match="include_flagged must be True or False, got 'no'"):
        ag.ServedImages(fake_service.url, include_flagged="no")


def test_served_images_refuse_a_concept_the_service_does_not_know_before_any_image(
    fake_service,
):
    stream = ag.ServedImages(fake_service.url, ["three", "seven"])
    with pytest.raises(AugmentError) as refused:
        next(iter(stream))
    assert str(refused.value) == (
        f"concepts: 'seven' is not a concept of the service at {fake_service.url}; it has "
        "zero, three, eight (GET /concepts)"
    )
    same = ag.ServedImages(fake_service.url, ["three", "THREE.n.01"])
    with pytest.raises(AugmentError, match=r"'three' and 'THREE.n.01' are the same concept \(th"):
        next(iter(same))
    assert fake_service.asked == []  # found before the stream asked for anything


def test_served_images_stop_on_a_concept_whose_every_image_is_flagged(fake_service):
    """Asking for more of them went on for ever, the label missing from training unsaid."""
    from augment.client import MOST_FLAGGED_IN_A_ROW

    stream = ag.ServedImages(fake_service.url, ["three", "zero"], per_request=50, images=1000)
    with pytest.raises(AugmentError, match=r"concept 'zero': the service flagged its last 100 "):
        levels(stream)
    assert stream.skipped["filtered"] == MOST_FLAGGED_IN_A_ROW + 34  # three's 17 a request


def test_serve_refused_for_its_replicas_leaves_no_trace_in_the_write_folder(tmp_path, capsys):
    """The folder was made ready (made, its job.yaml and shards/ written) before the replica
    count was refused."""
    from tests.conftest import cli, error_line

    demo = REPO / "jobs" / "demo.yaml"
    new = tmp_path / "new" / "served"
    code, _, err = cli(capsys, "serve", demo, "--write", new, "--replicas", "64")
    assert code == 2 and "ask for at most" in error_line(err)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "serve", demo, "--write", empty, "--replicas", "64")
    assert code == 2 and "ask for at most" in error_line(err)
    assert list(empty.iterdir()) == []


def test_a_write_folder_is_checked_before_ray_starts_without_writing_there(tmp_path, capsys):
    """A folder another process writes, or holding a user's file where a run writes its own,
    is refused before Ray starts, and left as it was."""
    import subprocess
    import sys

    from augment.errors import OutputError
    from augment.service import check_served_folder
    from tests.conftest import cli, error_line

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "job.yaml").write_text("name: mine\n")
    code, _, err = cli(capsys, "serve", REPO / "jobs" / "demo.yaml", "--write", theirs)
    assert code == 2 and "job.yaml was not written by augment" in error_line(err)
    assert [p.name for p in theirs.iterdir()] == ["job.yaml"]
    busy = tmp_path / "busy"
    busy.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); f.write('pid 1 on elsewhere'); "
            "f.flush(); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(busy / ".augment.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputError, match=r"busy is being written by another augment process"):
            check_served_folder(served_spec(), busy)
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in busy.iterdir()] == [".augment.lock"]
    check_served_folder(served_spec(), busy)  # free again
    check_served_folder(served_spec(), tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"file is a file, not a folder; choose another with"):
        check_served_folder(served_spec(), tmp_path / "file")


def test_a_write_folder_whose_concepts_changed_is_refused_with_the_serve_remedy(tmp_path):
    """`augment serve` has no --force: a folder whose images have other category ids now is
    refused with what serve can do instead."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from augment.errors import OutputError
    from augment.service import check_served_folder

    out = tmp_path / "served"
    ag.run(served_spec().model_copy(update={"limit": 2}), out=out, distributor="local")
    for shard in (out / "shards").glob("*.parquet"):
        table = pq.read_table(shard)
        moved = pc.add(table["category_id"], 1).cast(table.schema.field("category_id").type)
        index = table.schema.get_field_index("category_id")
        pq.write_table(table.set_column(index, "category_id", moved), shard)
    with pytest.raises(
        OutputError,
        match=r"another category id now .*; write to another folder \(--write\), or delete this",
    ):
        check_served_folder(served_spec(), out)


def test_a_stopped_service_says_which_exports_and_gallery_leave_out_what_it_served(
    tmp_path, capsys, monkeypatch
):
    """A --write folder's exports and gallery (an earlier run's) go stale as images are served
    into it; `augment filter` checks those for duplicates and writes them again."""
    import time as time_module

    import augment.api
    import augment.service as service_module
    from augment.service import Service, shard_names
    from tests.conftest import cli, write_fake_run

    folder = write_fake_run(
        tmp_path / "served", np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), {}
    )
    for name in ("coco", "gallery"):
        (folder / name).mkdir()  # as the run's export and `augment view` left them

    def serve_one_batch(spec, **options):
        service = Service("http://127.0.0.1:1", 1, "CPU", options["write"], shard_names(folder))
        shard = folder / "shards" / "part-00000.parquet"
        shutil.copy(shard, shard.with_name("part-00001.parquet"))  # a served batch
        return service

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(augment.api, "serve", serve_one_batch)
    monkeypatch.setattr(service_module.serve, "shutdown", lambda: None)
    monkeypatch.setattr(time_module, "sleep", interrupted)
    code, printed, _ = cli(capsys, "serve", REPO / "jobs" / "demo.yaml", "--write", folder)
    assert code == 0
    assert (
        f"{folder} holds coco, gallery written before the images served; `augment filter "
        f"{folder}` checks those images for duplicates and writes coco, gallery again"
    ) in " ".join(printed.split())
    unchanged = Service("http://127.0.0.1:1", 1, "CPU", str(folder), shard_names(folder))
    assert unchanged.outdated_outputs() == []  # nothing served since it started


def test_a_start_refused_after_the_writer_made_its_folder_ready_undoes_it(tmp_path):
    """A replica that cannot load its model fails the start after the writer has made the
    folder ready: what it made goes, what was there stays, and a served image keeps it all."""
    from augment.service import prepare_served_folder, undo_for

    spec = served_spec()
    new = tmp_path / "new" / "served"
    undo = undo_for(new)
    prepare_served_folder(spec, new, hold=False)
    assert (new / "job.yaml").is_file() and (new / "shards").is_dir()
    undo()
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    undo = undo_for(kept)
    prepare_served_folder(spec, kept, hold=False)
    undo()
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    served = tmp_path / "served"
    undo = undo_for(served)
    prepare_served_folder(spec, served, hold=False)
    (served / "shards" / "part-00000.parquet").write_bytes(b"a served batch")
    undo()
    assert sorted(p.name for p in served.iterdir()) == [".augment.lock", "job.yaml", "shards"]


def test_a_client_retries_an_answer_cut_short_and_names_one_not_of_the_service():
    """An answer cut short (IncompleteRead), a reply that is no HTTP, or JSON of another shape
    ended in a bare traceback, not retried; a count from numpy could not be sent at all."""
    from http.server import BaseHTTPRequestHandler

    answers = iter([b"cut", b"cut", b"{}", b"null"])
    seen = []

    class Odd(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            kind = next(answers)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100" if kind == b"cut" else str(len(kind)))
            self.end_headers()
            self.wfile.write(b"{" if kind == b"cut" else kind)

        def log_message(self, *args):
            pass

    with serving(Odd) as url:
        client = ag.Client(url, retries=1, backoff=0)
        with pytest.raises(AugmentError, match="failed 2 times, last: IncompleteRead"):
            client.generate("seven", n=np.int64(2))
        assert client.retried == 1 and seen[0]["n"] == 2
        for _ in range(2):  # {} and null: JSON, but not the service's answer
            with pytest.raises(AugmentError, match="did not answer as an augment service"):
                client.generate("seven")
    with pytest.raises(AugmentError, match="n: a whole number, got 2.5"):
        client.generate("seven", n=2.5)


def test_a_second_service_in_one_process_is_refused(served):
    """Serve keeps one HTTP proxy and one app of augment's name a process: a second start
    returned an address nothing listened on, and the first address served the second job."""
    from augment.service import ServeOptions, start_service

    with pytest.raises(
        AugmentError, match=f"a service already runs in this process, at {served.url}"
    ):
        start_service(served_spec(), ServeOptions(port=free_port(), replicas=1))
    assert ag.Client(served.url).spec()["seed"] == served.spec.seed  # still the first job
