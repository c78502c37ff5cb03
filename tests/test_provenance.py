"""Provenance: every PNG says it is synthetic, from which model, job and settings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import cli, error_line
from PIL import Image

from augment import api, registry
from augment.api import load_spec, run
from augment.config import FilterSpec
from augment.errors import SpecError
from augment.generate.engine import encode_image, run_provenance
from augment.provenance import (
    has_watermark,
    model_content_hash,
    model_license,
    parameters_text,
    read_png_chunks,
    settings_hash,
)
from tests.conftest import in_hub_cache

REPO = Path(__file__).resolve().parent.parent


def test_an_exported_png_carries_both_chunks_and_augment_inspect_reads_them(
    write_job, tmp_path, capsys
):
    out = tmp_path / "out"
    spec = load_spec(write_job(), {"output.formats": ["parquet", "coco"]})
    run(spec, distributor="local")
    manifest = json.loads((out / "manifest.json").read_text())
    model = manifest["model"]
    assert model["name"] == "builtin:tiny-sd" and len(model["hash"]) == 64
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert coco["info"]["synthetic"] is True
    assert coco["info"]["models"] == [
        {"name": "builtin:tiny-sd", "hash": model["hash"], "license": None}
    ]
    entry = coco["images"][0]
    assert entry["synthetic"] is True and entry["model_hash"] == model["hash"]
    path = out / "coco" / "images" / entry["file_name"]
    with Image.open(path) as image:
        carried = json.loads(image.text["augment"])
        parameters = image.text["parameters"]
    record = next(
        r for r in pq.read_table(out / "shards").to_pylist() if r["item_id"] == entry["item_id"]
    )
    assert carried == {
        "item_id": record["item_id"],
        "job": "tiny",
        "settings_hash": settings_hash(record["settings"]),
        "model": "builtin:tiny-sd",
        "model_hash": model["hash"],
        "license": None,
        "version": carried["version"],
        "synthetic": True,
        "watermark": False,
        "adapters": [],
    }
    assert record["model_hash"] == model["hash"]
    assert parameters.splitlines()[0] == record["prompt"]
    assert f"Steps: 3, Sampler: {record['scheduler']}, CFG scale: 7.5, Seed: {record['seed']}" in (
        parameters
    )
    assert "Size: 32x32, Model: builtin:tiny-sd, Model hash: " + model["hash"][:10] in parameters

    code, printed, _ = cli(capsys, "inspect", path)
    assert code == 0 and "synthetic: yes" in printed and record["item_id"] in printed
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    code, printed, _ = cli(capsys, "inspect", plain)
    assert code == 0 and "no provenance" in printed
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code, _, err = cli(capsys, "inspect", tmp_path / "broken.png")
    assert code == 2 and "cannot read it as an image (no image format it knows)" in error_line(err)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("augment", '{"synthetic": "false"}')  # another tool's chunk of that name
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain, pnginfo=info)
    assert not api.inspect(plain)["synthetic"]
    code, _, err = cli(capsys, "inspect", tmp_path)  # a run's folder, say
    assert code == 2 and "is a folder; give image files" in error_line(err)


def test_the_model_hash_is_cached_and_follows_the_weights_and_the_licence_the_card(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights")
    (folder / "README.md").write_text("---\nlicense: openrail++\ntags: [x]\n---\n# a model\n")
    cache = tmp_path / "hashes.json"
    first = model_content_hash(folder, cache)
    assert first == model_content_hash(folder, cache) and len(json.loads(cache.read_text())) == 1
    (folder / "README.md").write_text("a card edit changes nothing")
    assert model_content_hash(folder, cache) == first
    weights.write_bytes(b"other weights")
    assert model_content_hash(folder, cache) not in (None, first)
    assert model_content_hash("runwayml/stable-diffusion-v1-5", cache) is None  # not on disk
    (folder / "README.md").write_text("---\nlicense: openrail++\n---\n")
    assert model_license(folder) == "openrail++"
    assert model_license(folder, "cc-by-4.0") == "cc-by-4.0"
    assert model_license(tmp_path) is None
    for shipped in ("builtin:digits", "builtin:digits-without-nine", "builtin:digits-scorer"):
        assert model_license(registry.resolve("model", shipped, "test")) == "apache-2.0"


def jpeg_again(data: bytes, quality: int = 90) -> np.ndarray:
    """The pixels after a JPEG re-encode (what strips the text chunks)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def smooth_image(seed: int, size: int = 256) -> np.ndarray:
    """A smooth random picture (upscaled noise), like a render more than like noise."""
    small = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def test_the_invisible_watermark_survives_a_jpeg_re_encode_and_is_absent_without_it():
    found = {}
    for marked in (True, False):
        pngs = [encode_image(smooth_image(seed), None, marked)[0] for seed in range(6)]
        found[marked] = sum(has_watermark(jpeg_again(png)) for png in pngs)
    assert found == {True: 6, False: 0}


def test_a_watermarked_run_marks_its_records_chunks_and_pixels(tmp_path, capsys):
    """The digits model at 256 px: the setting reaches every image, and inspect finds it."""
    spec = load_spec(
        REPO / "jobs" / "demo.yaml",
        {
            "output.dir": str(tmp_path / "out"),
            "limit": 2,
            "generation.num_inference_steps": 2,
            "generation.height": 256,
            "generation.width": 256,
            "generation.watermark": True,
            "output.formats": ["parquet"],
        },
    ).model_copy(update={"paste": None, "segment": None, "filters": FilterSpec()})
    run(spec, distributor="local")
    rows = pq.read_table(tmp_path / "out" / "shards").to_pylist()
    assert len(rows) == 2 and all(r["watermark"] for r in rows)
    png = tmp_path / "one.png"
    png.write_bytes(rows[0]["image"]["bytes"])
    code, printed, _ = cli(capsys, "inspect", png)
    assert code == 0 and "invisible watermark: found" in printed
    assert json.loads(read_png_chunks(rows[0]["image"]["bytes"])["augment"])["watermark"] is True
    jpeg = tmp_path / "re-encoded.jpg"
    Image.fromarray(jpeg_again(rows[0]["image"]["bytes"])).save(jpeg, quality=95)
    code, printed, _ = cli(capsys, "inspect", jpeg)
    assert code == 0 and "invisible watermark: found" in printed and "no provenance" in printed
    with pytest.raises(SpecError, match="watermark needs images of 256 px or more"):
        load_spec(REPO / "jobs" / "demo.yaml", {"generation.watermark": True})


def test_adapters_are_named_by_the_hash_of_the_file_loaded(write_job, tmp_path):
    lora, embedding = tmp_path / "lora", tmp_path / "token.bin"
    lora.mkdir()
    (lora / "w.bin").write_bytes(b"lora weights")
    embedding.write_bytes(b"an embedding")
    adapters = {
        "generation.loras": [{"path": str(lora), "weight_name": "w.bin"}],
        "generation.textual_inversions": [{"path": str(embedding), "token": "<x>"}],
    }
    first = run_provenance(load_spec(write_job(), adapters))
    assert [(a.kind, a.name) for a in first.adapters] == [
        ("lora", str(lora)),
        ("textual_inversion", str(embedding)),
    ]
    assert first.adapters[0].hash == model_content_hash(lora / "w.bin")
    record = {"prompt": "p", "steps": 3, "scheduler": "ddim", "guidance": 7.5, "seed": 1}
    text = parameters_text({**record, "width": 32, "height": 32}, first)
    assert f'Lora hashes: "lora: {first.adapters[0].hash[:10]}"' in text
    assert f'TI hashes: "token: {first.adapters[1].hash[:10]}"' in text

    (lora / "finetune.json").write_text("{}")  # a card beside the weights renders nothing
    assert run_provenance(load_spec(write_job(), adapters)).adapters == first.adapters
    (lora / "w.bin").write_bytes(b"other lora weights of the same name")
    again = run_provenance(load_spec(write_job(), adapters))
    assert again.adapters[0].hash not in (None, first.adapters[0].hash)
    assert again.model_hash == first.model_hash


def test_a_dreambooth_fine_tune_is_the_model_its_images_name(write_job, tmp_path):
    images = tmp_path / "real" / "nine"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(images / "0.png")
    job = write_job().read_text() + (
        f"finetune: {{method: dreambooth, source: {{path: {images.parent}}}, "
        f"concepts: [nine], out: {tmp_path / 'adapters'}}}\n"
    )
    spec = load_spec(write_job(job, name="dreambooth.yaml"))
    base = run_provenance(spec).model_hash
    tuned = Path(spec.paths.finetuned)
    (tuned / "unet").mkdir(parents=True)
    (tuned / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"tuned weights")
    (tuned / "finetune.json").write_text(json.dumps({"method": "dreambooth", "files": []}))
    provenance = run_provenance(spec)
    assert provenance.model_hash == model_content_hash(tuned) not in (None, base)
    assert provenance.adapters == ()
    (tuned / "checkpoints").mkdir()
    (tuned / "checkpoints" / "step-0000001.pt").write_bytes(b"resumable state")
    assert run_provenance(spec).model_hash == provenance.model_hash


def test_a_single_file_models_config_folder_and_a_hub_models_snapshot_are_hashed(
    tmp_path, monkeypatch
):
    """What shapes the pixels is in the provenance, so a resume notices it changed: the
    configs a single .safetensors file takes from `generation.config` (not the weights there),
    and the files of a cached hub model's snapshot, as a local folder's."""
    import shutil

    from augment.config import parse_spec
    from tests.conftest import TINY_JOB

    def spec(model: str):
        return parse_spec(TINY_JOB.replace("OUT_DIR", "out").replace("builtin:tiny-sd", model))

    tiny = Path(spec("builtin:tiny-sd").paths.model)
    configs = shutil.copytree(tiny, tmp_path / "configs", ignore=shutil.ignore_patterns("*.safe*"))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    single = f"{tmp_path / 'model.safetensors'}\n  config: {configs}"
    (adapter,) = run_provenance(spec(single)).adapters
    assert adapter.kind == "config" and adapter.hash
    scheduler = configs / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text().replace('"epsilon"', '"v_prediction"'))
    assert run_provenance(spec(single)).adapters[0].hash != adapter.hash

    in_hub_cache(Path(tiny), "acme/sd", tmp_path / "hub", monkeypatch)
    local = run_provenance(spec("builtin:tiny-sd")).model_hash
    assert run_provenance(spec("acme/sd")).model_hash == local


def test_a_model_whose_unet_folder_is_linked_from_elsewhere_is_hashed_with_it(tmp_path):
    """os.walk follows linked folders as the loader does; rglob left a linked unet/ out, so two
    models of other UNets shared one hash."""
    import shutil

    from augment.provenance import model_content_hash
    from augment.registry import resolve

    source = Path(resolve("model", "digits", "test"))
    whole = model_content_hash(source, tmp_path / "cache")
    linked = tmp_path / "linked"
    linked.mkdir()
    for part in source.iterdir():
        if part.name == "unet":
            (linked / "unet").symlink_to(part, target_is_directory=True)
        elif part.is_dir():
            shutil.copytree(part, linked / part.name)
        else:
            shutil.copy(part, linked / part.name)
    assert model_content_hash(linked, tmp_path / "cache") == whole
