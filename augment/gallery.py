"""A static HTML gallery of a run: `augment view OUT` writes OUT/gallery/ (no server needed).

- `index.html`: the per-concept table (`augment.quality`: fidelity, flag rates, diversity, and
  KID when a benchmark beside the run measured them), worst first, each concept a link;
- `concept-<name>.html`: the concept's thumbnails; a click shows the prompt, seed, scores and
  flags of an image; checkboxes show or hide images by flag (kept, filtered, duplicate, black,
  nsfw, ...);
- `images/`: the thumbnails (at most `THUMB_SIDE` px), `gallery.js` and `gallery.css`.

The records travel inside each page as JSON and the page's script draws the grid, so the
gallery opens from disk (file://) in any browser. The flags it shows are the shards' when it
was written: `augment filter` and a resumed run write an existing gallery again
(`refresh_gallery`), with the settings it records (`GALLERY_SETTINGS`).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from collections import Counter
from pathlib import Path

import pandas as pd
from PIL import Image

from augment.progress import tracked
from augment.quality import concept_quality
from augment.records import FLAGS
from augment.sinks import (
    check_own_folder,
    parquet,
    put_back,
    recorded_settings,
    run_state,
    write_in_place,
)
from augment.sinks.rows import concept_labels, read_manifest
from augment.taxonomy.listfile import slugify

#: Thumbnails are at most this many pixels on their longer side.
THUMB_SIDE = 256
#: Images per concept page by default: a browser stays responsive.
PER_CONCEPT = 500

SCRIPT = """\
"use strict";
// Draws a concept page from its embedded records; checkboxes filter by flag.
(function () {
  const records = JSON.parse(document.getElementById("records").textContent);
  const grid = document.getElementById("grid");
  const details = document.getElementById("details");
  const shown = document.getElementById("shown");
  const boxes = Array.from(document.querySelectorAll("input[data-flag]"));

  function kind(record) {
    return record.flags.length ? record.flags : ["kept"];
  }

  function describe(record) {
    const lines = [
      ["item", record.item_id], ["prompt", record.prompt], ["seed", record.seed],
      ["concept score", record.concept_score], ["read as", record.scored_as],
      ["CLIP score", record.clip_score], ["flags", record.flags.join(", ") || "none"],
      ["repeats", record.duplicate_of],
    ];
    details.replaceChildren();
    for (const [name, value] of lines) {
      if (value === null || value === undefined) continue;
      const row = document.createElement("div");
      const label = document.createElement("b");
      label.textContent = name + ": ";
      row.append(label, String(value));
      details.append(row);
    }
  }

  for (const record of records) {
    const figure = document.createElement("figure");
    figure.className = "thumb " + kind(record).join(" ");
    figure.dataset.flags = kind(record).join(" ");
    const image = document.createElement("img");
    image.src = record.thumbnail;
    image.alt = record.prompt;
    image.title = record.prompt + " (seed " + record.seed + ")";
    image.loading = "lazy";
    const caption = document.createElement("figcaption");
    caption.textContent = record.flags.join(" ") ||
      (record.concept_score === null ? "" : record.concept_score.toFixed(2));
    figure.append(image, caption);
    figure.addEventListener("click", () => describe(record));
    grid.append(figure);
  }

  function update() {
    const wanted = new Set(boxes.filter((b) => b.checked).map((b) => b.dataset.flag));
    let count = 0;
    for (const figure of grid.children) {
      const visible = figure.dataset.flags.split(" ").some((flag) => wanted.has(flag));
      figure.hidden = !visible;
      count += visible ? 1 : 0;
    }
    shown.textContent = String(count);
  }
  boxes.forEach((box) => box.addEventListener("change", update));
  update();
})();
"""

STYLE = """\
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
#grid { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; width: 96px; cursor: pointer; text-align: center; font-size: 11px; }
figure img { width: 96px; height: 96px; object-fit: contain; background: #eee;
  image-rendering: pixelated; }
figure:not(.kept) img { outline: 3px solid #d33; }
#details { position: sticky; top: 0; background: #fafafa; border: 1px solid #ccc;
  padding: 0.5em; margin: 0.5em 0; min-height: 1.5em; font-size: 13px; }
label { margin-right: 1em; }
"""


def page(title: str, body: str, script: bool = False) -> str:
    tail = '<script src="gallery.js"></script>\n' if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<link rel="stylesheet" href="gallery.css">\n</head>\n<body>\n'
        f"{body}\n{tail}</body>\n</html>\n"
    )


def thumbnail(data: bytes) -> bytes:
    """The image itself when small enough, else a PNG at most THUMB_SIDE px long."""
    image = Image.open(io.BytesIO(data))
    if max(image.size) <= THUMB_SIDE:
        return data
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def page_names(labels: list[str]) -> dict[str, str]:
    """Concept label -> its page's file name, distinct for every label: "father figure" and
    "father-figure" (two WordNet synsets) are one file name, and one page held both links."""
    slugs = {label: slugify(label) for label in labels}
    taken = Counter(slugs.values())
    return {
        label: f"concept-{slug}.html"
        if taken[slug] == 1
        else f"concept-{slug}-{hashlib.sha1(label.encode()).hexdigest()[:6]}.html"
        for label, slug in slugs.items()
    }


def concept_page(concept: str, records: list[dict], total: int) -> str:
    flags = ["kept", *(f for f in FLAGS if any(f in r["flags"] for r in records))]
    boxes = " ".join(
        f'<label><input type="checkbox" data-flag="{flag}" checked> {flag} '
        f"({sum((flag in r['flags']) or (flag == 'kept' and not r['flags']) for r in records)})"
        "</label>"
        for flag in flags
    )
    more = f" (the first {len(records)} of {total})" if total > len(records) else ""
    # every "<" escaped: "</script>" ended the data block, and "<!--<script>" in a prompt put
    # the HTML parser in a state where the block swallowed the gallery's own script tag
    data = json.dumps(records).replace("<", "\\u003c")
    body = (
        f'<p><a href="index.html">all concepts</a></p>\n<h1>{html.escape(concept)}</h1>\n'
        f'<p>{total} images{more}; <span id="shown">0</span> shown. Click an image for its '
        "prompt, seed and scores.</p>\n"
        f'<p>{boxes}</p>\n<div id="details"></div>\n<div id="grid"></div>\n'
        f'<script type="application/json" id="records">{data}</script>'
    )
    return page(f"{concept}: augment gallery", body, script=True)


def index_page(run: str, table: pd.DataFrame, pages: dict[str, str]) -> str:
    shown = table.copy()
    for column in shown.columns:
        if column != "concept":
            shown[column] = [
                "" if pd.isna(v) else (f"{v:.3g}" if isinstance(v, float) else str(v))
                for v in shown[column]
            ]
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.iterrows():
        cells = [
            f'<td><a href="{pages[row["concept"]]}">{html.escape(row["concept"])}</a></td>',
            *(f"<td>{html.escape(str(row[c]))}</td>" for c in shown.columns[1:]),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = (
        f"<h1>{html.escape(run)}</h1>\n<p>Concepts worst first (fidelity: the share of "
        "images the run's scorer reads as their concept; diversity: mean cosine distance "
        "between two images on the scorer's features).</p>\n"
        f"<table>\n<tr>{header}</tr>\n" + "\n".join(rows) + "\n</table>"
    )
    return page(f"{run}: augment gallery", body)


def gallery_records(out_dir: Path, folder: Path, per_concept: int) -> dict[str, tuple]:
    """concept label (`concept_labels`) -> (the page's records, how many it has); thumbnails
    written on the way."""
    columns = ["item_id", "concept_id", "concept_name", "prompt", "seed", "image"]
    columns += ["concept_score", "clip_score", "scored_as", "duplicate_of", *FLAGS]
    pages: dict[str, tuple[list[dict], int]] = {}  # by concept_id
    names: dict[str, str] = {}
    for path in tracked(parquet.run_shards(out_dir), "gallery", unit="shard"):
        for record in parquet.read_shard(path, columns).to_pylist():
            concept = record["concept_id"] or record["concept_name"]  # older shards: no id
            names[concept] = record["concept_name"]
            kept, total = pages.get(concept, ([], 0))
            pages[concept] = (kept, total + 1)
            if len(kept) >= per_concept:
                continue
            name = f"images/{record['item_id']}.png"
            (folder / name).write_bytes(thumbnail(record["image"]["bytes"]))
            kept.append(
                {
                    "item_id": record["item_id"],
                    "prompt": record["prompt"],
                    "seed": str(record["seed"]),  # JavaScript's numbers hold 53 bits, not 64
                    "concept_score": record["concept_score"],
                    "clip_score": record["clip_score"],
                    "scored_as": record["scored_as"],
                    "duplicate_of": record["duplicate_of"],
                    "flags": [flag for flag in FLAGS if record[flag]],
                    "thumbnail": name,
                }
            )
    labels = concept_labels(names)
    return {labels[concept]: page for concept, page in pages.items()}


def quality_for_index(out_dir: Path) -> pd.DataFrame:
    """The run's per-concept table, with the real-image columns of a benchmark beside it."""
    table = concept_quality(out_dir)
    results = out_dir / "bench" / "results.parquet"
    if results.is_file():
        frame = pd.read_parquet(results)
        measured = frame[frame["task"] == "quality"]
        for metric in ("real_diversity", "kid"):
            values = measured[measured["metric"] == metric].set_index("label")["value"]
            if len(values):
                table[metric] = table["concept"].map(values)
    keep = ["concept", "images", "fidelity", "flagged", "filtered_rate", "duplicate_rate"]
    keep += ["diversity", "real_diversity", "kid"]
    return table[[c for c in keep if c in table and table[c].notna().any()]]


#: The file in a gallery folder that says how it was written ({"per_concept": ...}), so that
#: writing it again after the flags changed keeps it as the user asked for it.
GALLERY_SETTINGS = ".augment-gallery.json"
#: What a gallery folder holds: anything else there is the user's, and writing it again (a new
#: folder swapped in) would delete it.
GALLERY_NAMES = ("*.html", "gallery.css", "gallery.js", "images", GALLERY_SETTINGS)


def check_gallery_replaceable(out_dir: Path) -> None:
    """OUT/gallery, if there is one, holds only what `augment view` writes: checked before a
    command that will write it again changes anything."""
    check_own_folder(Path(out_dir) / "gallery", GALLERY_NAMES, "gallery")


def gallery_settings(out_dir: Path) -> dict | None:
    """The settings OUT/gallery was written with ({} where it records none: an earlier
    augment's); None where OUT has no gallery."""
    folder = Path(out_dir) / "gallery"
    put_back(folder)
    return recorded_settings(folder / GALLERY_SETTINGS) if folder.is_dir() else None


def refresh_gallery(
    out_dir: Path, settings: dict | None = None, unless_current: bool = False
) -> dict[str, Path]:
    """Write OUT/gallery again (its flags went stale: `augment filter`, a resumed run) with
    `settings`, by default those of the gallery there; {} where there is none to write, else
    {"gallery": its index page}. `unless_current`: one made from the shards as they are now
    is kept as it is."""
    settings = gallery_settings(out_dir) if settings is None else settings
    if settings is None:
        return {}
    index = Path(out_dir) / "gallery" / "index.html"
    if unless_current and settings.get("state") == run_state(out_dir) and index.is_file():
        return {"gallery": index}
    per_concept = settings.get("per_concept")
    if not isinstance(per_concept, int) or per_concept < 1:
        per_concept = PER_CONCEPT
    return {"gallery": write_gallery(out_dir, per_concept)}


def write_gallery(out_dir: Path, per_concept: int = PER_CONCEPT) -> Path:
    """Write OUT/gallery (replacing an earlier one) of a finished run, as `augment export` and
    `augment filter` want one (an interrupted run: resume it first); returns the index page."""
    out_dir = Path(out_dir)
    parquet.run_shards(out_dir)  # a wrong folder is named before anything is written in it
    read_manifest(out_dir)  # no manifest.json: not a finished run, said in one line
    check_gallery_replaceable(out_dir)

    def write(tmp: Path, *_) -> Path:
        (tmp / "images").mkdir(parents=True)
        pages = gallery_records(out_dir, tmp, per_concept)
        table = quality_for_index(out_dir)
        names = page_names(sorted(set(pages) | set(table["concept"])))
        for concept, (records, total) in pages.items():
            (tmp / names[concept]).write_text(concept_page(concept, records, total))
        (tmp / "index.html").write_text(index_page(out_dir.name, table, names))
        (tmp / "gallery.js").write_text(SCRIPT)
        (tmp / "gallery.css").write_text(STYLE)
        settings = {"per_concept": per_concept, "state": run_state(out_dir)}
        (tmp / GALLERY_SETTINGS).write_text(json.dumps(settings) + "\n")
        return tmp / "index.html"

    # swapped in by two renames, as the exports are: deleting the old one first left, when a
    # process was killed meanwhile, a gallery of pages without their thumbnails
    return write_in_place(out_dir / "gallery", write, [], None)
