"""The static gallery, opened in a real headless browser (Debian's Chromium, as `make test`
installs it): the page's script runs without a console message and draws every thumbnail."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from augment.config import load_spec
from augment.job import RunOptions, run_job
from tests.conftest import TINY_JOB, cli

#: Flags the machines' Chromium needs as root on a closed network (see the env notes).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def open_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and every console message it logged."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is missing: `make test` installs it (Debian package chromium)"
    command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom"]
    done = subprocess.run(
        [*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def test_gallery_pages_load_in_a_browser_and_show_every_thumbnail(tmp_path: Path, capsys):
    job = tmp_path / "job.yaml"
    text = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    # a prompt holding "<!--<script>" swallowed the page's own script tag: nothing was drawn
    text = text.replace('"a handwritten digit {name}"', '"a handwritten digit {name} <!--<script>"')
    job.write_text(text + "filters:\n  scorer: builtin:digits-scorer\n")
    run_job(load_spec(job), RunOptions(distributor="local"))
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "view", out)
    assert code == 0 and "gallery/index.html" in stdout

    records = pq.read_table(out / "shards", columns=["item_id", "concept_name", "filtered"])
    rows = records.to_pylist()
    index, console = open_in_chromium(out / "gallery" / "index.html", tmp_path / "profile")
    assert console == []
    concepts = sorted({r["concept_name"] for r in rows})
    assert sorted(re.findall(r'href="concept-(\w+)\.html"', index)) == concepts
    assert "fidelity" in index and "diversity" in index

    concept = concepts[0]
    page = out / "gallery" / f"concept-{concept}.html"
    dom, console = open_in_chromium(page, tmp_path / "profile")
    assert console == []
    mine = [r for r in rows if r["concept_name"] == concept]
    thumbs = re.findall(r'<figure class="thumb ([a-z_ ]+)"', dom)
    assert len(thumbs) == len(mine) == 3
    assert sum("filtered" in t for t in thumbs) == sum(r["filtered"] for r in mine)
    assert f'id="shown">{len(mine)}<' in dom
    seeds = pq.read_table(out / "shards", columns=["concept_name", "seed"]).to_pylist()
    for seed in (r["seed"] for r in seeds if r["concept_name"] == concept):
        assert f"(seed {seed})" in dom  # all 64 bits: JavaScript's numbers rounded them
    for source in re.findall(r'<img src="([^"]+)"', dom):
        assert (page.parent / source).is_file()

    code, _, stderr = cli(capsys, "view", tmp_path / "nothing")
    assert code == 2 and "no such folder" in stderr and not (tmp_path / "nothing").exists()
    code, _, stderr = cli(capsys, "view", out / "shards")  # a wrong folder: nothing left in it
    assert code == 2 and "is a run's shards folder; give the run's output folder" in stderr
    assert not list((out / "shards").glob(".*"))
