"""Clients of `augment serve`: `Client` for any Python program (a labelling tool, a notebook),
and `ServedImages`, a PyTorch IterableDataset that streams fresh images into a training loop.

Only the standard library speaks HTTP here, so a client needs neither Ray nor the models. A
refused request (4xx) raises `RequestError` with the service's one-line reason; a failed one
(connection lost, 5xx: a replica restarting) is retried with backoff, `retries` times.
"""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import logging
import operator
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from augment.errors import (
    AugmentError,
    RequestError,
    above,
    as_list,
    at_least,
    first_line,
    flag,
    some_of,
)
from augment.records import FLAGS

log = logging.getLogger(__name__)

#: A stream stops when this many images of one concept in a row come back flagged: it would
#: otherwise ask for more of them for ever, and train without that label, unsaid.
MOST_FLAGGED_IN_A_ROW = 100


@dataclass
class ServedImage:
    """One served image: its PNG bytes (provenance chunks included) and its record."""

    png: bytes
    record: dict

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png))

    @property
    def concept(self) -> str:
        return self.record["concept_name"]


class Client:
    """The service at `url`: `generate`, `concepts`, `health`, `spec`."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        timeout: float = 300.0,
        retries: int = 5,
        backoff: float = 0.5,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AugmentError(
                f"service url {url!r}: give it with its scheme, as `augment serve` prints it "
                "(http://HOST:PORT)"
            )
        above("timeout", timeout, 0)
        at_least("retries", retries, 0)
        at_least("backoff", backoff, 0.0)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retried = 0  # requests sent again after a failure, over this client's life

    def generate(
        self,
        concept: str,
        n: int = 1,
        prompt: str | None = None,
        start: int = 0,
        seed: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> list[ServedImage]:
        """`n` images of `concept`, prompt variants `start` to `start + n - 1` (the same
        items, and bytes, as a batch run of the job); `prompt` replaces the job's templates,
        `seed` the job seed, `overrides` some generation settings (GET /health says which)."""
        # counts from numpy or torch (np.bincount, a tensor's item) as plain ints: json cannot
        # write those, and failed with a bare TypeError
        n, start = whole_number("n", n), whole_number("start", start)
        seed = None if seed is None else whole_number("seed", seed)
        body: dict[str, Any] = {"concept": concept, "n": n, "start": start}
        for key, value in (("prompt", prompt), ("seed", seed), ("overrides", overrides)):
            if value is not None:
                body[key] = value
        answer = self.call("POST", "/generate", body)
        try:
            images, records = answer["images"], answer["records"]
            for record in records:  # bytes travel in base64
                if record.get("thumb") is not None:
                    record["thumb"] = base64.b64decode(record["thumb"])
            return [
                ServedImage(base64.b64decode(png), record)
                for png, record in zip(images, records, strict=True)
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # binascii.Error too
            raise AugmentError(
                f"POST {self.url}/generate did not answer as an augment service ({first_line(exc)}"
                "); is `augment serve` running there, on that port?"
            ) from None

    def concepts(self) -> list[dict]:
        return self.call("GET", "/concepts")

    def health(self) -> dict:
        return self.call("GET", "/health")

    def spec(self) -> dict:
        return self.call("GET", "/spec")

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        """The JSON answer; 4xx raises RequestError, other failures are retried."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            timed_out = False  # the last attempt's failure says what to do
            request = urllib.request.Request(
                self.url + path, data, {"Content-Type": "application/json"}, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = response.read()
                try:
                    return json.loads(answer)
                except ValueError:  # a web page: another server listens there
                    raise AugmentError(
                        f"{method} {self.url}{path} did not answer as an augment service (not "
                        "JSON); is `augment serve` running there, on that port?"
                    ) from None
            except urllib.error.HTTPError as exc:
                reason = error_text(exc)
                if 400 <= exc.code < 500:
                    raise RequestError(reason, exc.code) from None
                failure = f"HTTP {exc.code}: {reason}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                cause = getattr(exc, "reason", exc)
                timed_out = isinstance(cause, TimeoutError)
                failure = f"no answer within {self.timeout:g} s" if timed_out else str(cause)
            except http.client.HTTPException as exc:  # an answer cut short, or not HTTP at all
                failure = f"{type(exc).__name__}: {first_line(exc)}"
            if attempt < self.retries:
                self.retried += 1
                time.sleep(self.backoff * 2**attempt)
        tries = "once" if self.retries == 0 else f"{self.retries + 1} times, last"
        if timed_out:  # it listens, but renders for longer than that
            hint = (
                "the service may still be rendering (a large request, or a busy replica): "
                "ask for fewer or smaller images, or give Client(timeout=...) more"
            )
        else:
            hint = "is `augment serve` running there?"
        raise AugmentError(f"{method} {self.url}{path} failed {tries}: {failure}; {hint}")


def whole_number(name: str, value) -> int:
    """`value` as an int (numpy's and torch's integers too), or an error naming the argument."""
    try:
        return operator.index(value)
    except TypeError:
        try:
            if hasattr(value, "item") and float(value.item()).is_integer():  # a 0-d tensor
                return int(value.item())
        except (TypeError, ValueError):
            pass
        raise AugmentError(f"{name}: a whole number, got {value!r}") from None


def error_text(exc: urllib.error.HTTPError) -> str:
    """The service's one-line reason (every error it answers is {"error": "..."}); else the
    `detail` of a FastAPI server's own shape, else the first 200 characters the body says (a
    proxy's or another server's page)."""
    body = exc.read().decode(errors="replace")
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        reason = answer.get("error", answer.get("detail"))
        if reason is not None:
            return " ".join(str(reason).split())
    return " ".join(body.split())[:200] or str(exc.reason)


class ServedImages(torch.utils.data.IterableDataset):
    """(image, label) pairs streamed from a service: the concepts in turn, `per_request` images
    a request, `images` in all (None: without end). Each request starts where that concept's
    last one stopped, and DataLoader workers take turns, so no image comes twice; the label is
    the concept's index in `concepts` (default: every concept of the job, in its order).

    When iteration starts, before any image is asked for, every concept is checked against
    the service's GET /concepts. Images the service's checks flag (black, NaN, NSFW, filtered,
    ...: a record's FLAGS) are skipped unless `include_flagged`, as exports skip them; more are
    asked for in their place, and `skipped` counts them, each under its first flag (with
    DataLoader workers, each worker's copy counts its own, and logs it when its stream ends).
    A service that writes its job's dataset (`serve --write`) serves only that dataset's
    prompt variants (GET /health's `variants`): the stream ends with them, with a warning when
    fewer images came than `images` asked for.
    """

    def __init__(
        self,
        url: str,
        concepts: list[str] | None = None,
        per_request: int = 8,
        images: int | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        start: int = 0,
        seed: int | None = None,
        include_flagged: bool = False,
    ):
        super().__init__()
        at_least("per_request", per_request, 1)
        if images is not None:
            at_least("images", images, 1)
        at_least("start", start, 0)
        flag("include_flagged", include_flagged)
        if concepts is not None:
            concepts = as_list(concepts)  # "three" looped over its letters
            twice = sorted({c for c in concepts if concepts.count(c) > 1})
            if twice:  # two labels for the same images
                raise AugmentError(f"concepts: {twice[0]!r} is given twice; give each once")
        self.url = url
        self.concepts = concepts
        self.per_request = per_request
        self.images = images
        self.transform = transform
        self.start = start
        self.seed = seed
        self.include_flagged = include_flagged
        self.skipped: Counter[str] = Counter()  # flagged images left out, by their first flag

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        client = Client(self.url)
        wanted = self.concept_keys(client.concepts())
        health = client.health()
        # a --write service's dataset ends there (None: any variant is served)
        last = health.get("variants") if isinstance(health, dict) else None
        quota = None
        if self.images is not None:  # this worker's share
            quota = self.images // workers + (worker < self.images % workers)
        given = 0
        in_a_row = dict.fromkeys(wanted, 0)  # flagged images of each concept since its last kept
        try:
            for round_ in itertools.count():
                variant = self.start + (round_ * workers + worker) * self.per_request
                if last is not None and variant >= last:
                    if quota is not None and given < quota:
                        log.warning(
                            "served images: the service at %s writes a dataset of %d image(s) "
                            "per concept (serve --write), so this stream ends after %d of the "
                            "%d asked for",
                            self.url,
                            last,
                            given,
                            quota,
                        )
                    return
                for label, concept in enumerate(wanted):
                    n = self.per_request if quota is None else min(self.per_request, quota - given)
                    if last is not None:
                        n = min(n, last - variant)
                    if n < 1:
                        return
                    for served in client.generate(concept, n, start=variant, seed=self.seed):
                        flags = [name for name in FLAGS if served.record.get(name)]
                        if flags and not self.include_flagged:
                            self.skipped[flags[0]] += 1
                            in_a_row[concept] += 1
                            if in_a_row[concept] >= MOST_FLAGGED_IN_A_ROW:
                                raise AugmentError(
                                    f"concept {served.concept!r}: the service flagged its last "
                                    f"{MOST_FLAGGED_IN_A_ROW} images in a row ({', '.join(flags)}"
                                    "); check the job's filters and model, or pass "
                                    "include_flagged=True to stream flagged images too"
                                )
                            continue
                        in_a_row[concept] = 0
                        image = served.image.convert("RGB")
                        yield (self.transform(image) if self.transform else image), label
                        given += 1
        finally:
            if self.skipped:
                counts = ", ".join(f"{name} {count}" for name, count in self.skipped.items())
                log.info("served images: %d flagged skipped (%s)", self.skipped.total(), counts)

    def concept_keys(self, known: list[dict]) -> list[str]:
        """How to ask for each concept to stream, by label, checked against the service's own
        list (GET /concepts, its ids where none are given: two concepts may share a name): one
        it does not know is refused before any image is asked for, not when its turn comes."""
        if self.concepts is None:
            return [concept["id"] for concept in known]
        exact: dict[str, dict[str, dict]] = {}  # as the service finds them: id, name or
        folded: dict[str, dict[str, dict]] = {}  # synset as written, else in any case; one only
        for concept in known:
            for key in (concept["id"], concept["name"], concept.get("synset")):
                if key:
                    exact.setdefault(str(key), {})[concept["id"]] = concept
                    folded.setdefault(str(key).lower(), {})[concept["id"]] = concept
        chosen: dict[str, str] = {}  # id -> the name it was given by
        for name in self.concepts:
            written = list(exact.get(str(name), {}).values())
            matches = written or list(folded.get(str(name).lower(), {}).values())
            concept = matches[0] if len(matches) == 1 else None
            if concept is None and matches:
                how = "" if written else " in any case"
                raise AugmentError(
                    f"concepts: {name!r} names several concepts{how} "
                    f"({', '.join(c['name'] + ' (' + c['id'] + ')' for c in matches[:4])}); "
                    "give its id"
                )
            if concept is None:
                raise AugmentError(
                    f"concepts: {name!r} is not a concept of the service at {self.url}; it has "
                    f"{some_of([c['name'] for c in known], 12)} (GET /concepts)"
                )
            if concept["id"] in chosen:  # two labels for the same images
                raise AugmentError(
                    f"concepts: {chosen[concept['id']]!r} and {name!r} are the same concept "
                    f"({concept['name']}); give it once"
                )
            chosen[concept["id"]] = name
        return list(chosen.values())  # as given: the service finds each as it was found here
