"""Every generation mode and model family, through `augment run` and the generator classes.

The jobs under jobs/tiny/ are the ones the README shows: each must run on a CPU and write
records that say how they were made (mode, settings, source image, transferred boxes).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from augment.config import JobSpec, SourceSpec, load_spec, parse_spec
from augment.errors import ModelError, SpecError
from augment.generate.engine import make_generator, negative_prompts
from augment.job import plan_for
from augment.sources import read_coco
from tests.conftest import REPO, TINY_JOB, in_hub_cache
from tests.conftest import run_cli as augment

TINY_JOBS = sorted((REPO / "jobs" / "tiny").glob("*.yaml"))


def pixels(record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record["image"]["bytes"]))).astype(int)


def test_every_mode_has_a_tiny_job():
    modes = {load_spec(job).generation.mode for job in TINY_JOBS}
    assert modes == {"txt2img", "img2img", "inpaint", "controlnet", "interpolate"}
    assert {job.stem for job in TINY_JOBS} >= {"sdxl", "lora"}


@pytest.mark.parametrize("job", TINY_JOBS, ids=lambda p: p.stem)
def test_tiny_job_runs_and_its_records_say_how_they_were_made(job: Path, tmp_path: Path):
    spec = load_spec(job)
    out = tmp_path / "out"
    result = augment("run", str(job), "--out", str(out), "--distributor", "local")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "shards").to_pylist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["missing"] == 0 and len(rows) == manifest["counts"]["planned"]
    g = spec.generation
    for row in rows:
        settings = json.loads(row["settings"])
        assert row["mode"] == g.mode == settings["mode"]
        assert settings["num_inference_steps"] == g.num_inference_steps == row["steps"]
        assert settings["scheduler"] == g.scheduler and settings["loras"] == [
            lora.model_dump() for lora in g.loras
        ]
        assert not row["nan"] and pixels(row).shape[:2] == (row["height"], row["width"])
        assert ("strength" in settings) == (g.mode in ("img2img", "inpaint"))
        assert ("interpolate" in settings) == (g.mode == "interpolate")
    if g.family == "sdxl":
        assert {row["family"] for row in rows} == {"sdxl"}
    if g.mode in ("img2img", "inpaint", "controlnet"):
        assert all(row["source_image_id"] for row in rows)
        assert sum(len(row["boxes"]) for row in rows) > 0
        for row in rows:
            for box in row["boxes"]:
                x, y, w, h = box["bbox"]
                assert 0 <= x and x + w <= row["width"] and 0 <= y and y + h <= row["height"]
        coco = json.loads((out / "coco" / "annotations.json").read_text())
        assert len(coco["annotations"]) == sum(len(row["boxes"]) for row in rows)
    if g.mode == "inpaint":
        for row in rows:  # the prompt names the class of the repainted box
            index = int(row["target"].removeprefix("box:"))
            assert row["boxes"][index]["category_id"] == row["category_id"]
            assert row["concept_name"] in row["prompt"]
    if g.mode == "interpolate":
        sequences = {row["sequence_id"] for row in rows}
        gifs = sorted((out / "animations").glob("*.gif"))
        assert len(gifs) == len(sequences) > 0
        with Image.open(gifs[0]) as gif:
            assert gif.n_frames == g.interpolate.frames
        assert len(list((out / "animations").glob("*/frame-*.png"))) == len(rows)


def changed(spec: JobSpec, **generation) -> JobSpec:
    """The spec with some generation settings changed, its files resolved again."""
    data = spec.model_dump()
    data["generation"].update(generation)
    return load_spec(data)


def render(spec_text: str, **changes) -> list[dict]:
    spec = changed(parse_spec(spec_text), **changes)
    return make_generator(spec)(plan_for(spec))


def test_a_batch_of_8_equals_8_single_renders():
    torch.set_num_threads(1)
    for name in ("txt2img", "img2img"):
        spec = load_spec(REPO / "jobs" / "tiny" / f"{name}.yaml")
        items = plan_for(spec)[:8]
        batched = make_generator(changed(spec, batch_size=8))
        singles = [r for item in items for r in batched([item])]
        together = batched(items)
        difference = max(
            np.abs(pixels(a) - pixels(b)).max() for a, b in zip(together, singles, strict=True)
        )
        print(f"{name}: batch of 8 vs 8 singles, max pixel difference {difference}/255")
        assert difference <= 1


def poison_unet(monkeypatch, generator, below_float32_only: bool) -> None:
    """Make the UNet predict NaN (in low precision only, or always): NaN latents follow."""
    forward = generator.pipe.unet.forward

    def nan_forward(sample, *args, **kwargs):
        output = forward(sample, *args, **kwargs)
        if below_float32_only and sample.dtype == torch.float32:
            return output
        return (output[0] * float("nan"), *output[1:])

    monkeypatch.setattr(generator.pipe.unet, "forward", nan_forward)


def test_nan_latents_are_flagged_and_rerendered_in_float32(monkeypatch):
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))
    items = plan_for(spec)[:2]
    low = make_generator(changed(spec, dtype="bfloat16"))
    poison_unet(monkeypatch, low, below_float32_only=True)
    records = low(items)
    assert [r["float32_retry"] for r in records] == [True, True]
    assert not any(r["nan"] or r["black"] for r in records)
    assert low.pipe.dtype == torch.bfloat16  # back to its own precision afterwards

    # Already float32: nothing to retry in, so the NaN stays flagged (and out of the exports).
    full = make_generator(spec)
    poison_unet(monkeypatch, full, below_float32_only=False)
    records = full(items)
    assert [(r["nan"], r["float32_retry"]) for r in records] == [(True, False), (True, False)]


def test_lora_changes_the_images_and_a_missing_lora_is_one_line(tmp_path: Path):
    job = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    plain = render(job)
    with_lora = render(job, loras=[{"path": "builtin:tiny-lora", "scale": 1.0}])
    difference = max(
        np.abs(pixels(a) - pixels(b)).max() for a, b in zip(plain, with_lora, strict=True)
    )
    assert difference > 20
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        job.replace("  batch_size: 4", "  batch_size: 4\n  loras:\n    - path: loras/nope")
    )
    result = augment("run", str(missing), "--distributor", "local")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "generation.loras[0].path: LoRA 'loras/nope' not found" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before the output folder was touched


def test_a_lora_folder_loads_the_file_it_names_or_its_only_one(tmp_path: Path):
    """One rule picks a folder's weights file for the loader, the family check and the
    provenance hash; a folder that leaves it open is refused before anything renders."""
    from augment.generate.engine import run_provenance
    from augment.generate.pipelines import LORA_WEIGHTS_FILE, check_models
    from augment.generate.tiny import save_tiny_lora
    from augment.provenance import model_content_hash

    job = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    made = save_tiny_lora(tmp_path / "made")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weeds.safetensors").write_bytes((made / LORA_WEIGHTS_FILE).read_bytes())
    expected = render(job, loras=[{"path": str(made)}])
    found = render(job, loras=[{"path": str(mine)}])
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(found, expected, strict=True))

    (mine / "other.safetensors").write_bytes(b"not chosen")
    spec = changed(parse_spec(job), loras=[{"path": str(mine)}])
    with pytest.raises(ModelError, match=r"loras\[0\].path: .* several weight files "):
        check_models(spec.generation, spec.paths)
    named = changed(spec, loras=[{"path": str(mine), "weight_name": "weeds.safetensors"}])
    check_models(named.generation, named.paths)
    (adapter,) = run_provenance(named).adapters
    assert adapter.hash == model_content_hash(mine / "weeds.safetensors")
    wrong = changed(spec, loras=[{"path": str(mine), "weight_name": "weed.safetensors"}])
    with pytest.raises(ModelError, match=r"loras\[0\].weight_name: 'weed.safetensors' is not"):
        check_models(wrong.generation, wrong.paths)
    file = str(mine / "weeds.safetensors")
    both = changed(spec, loras=[{"path": file, "weight_name": "other.safetensors"}])
    with pytest.raises(ModelError, match=r"drop weight_name, or give the folder"):
        check_models(both.generation, both.paths)


def test_a_raw_peft_adapter_folder_renders_as_the_same_lora_in_diffusers_layout(tmp_path: Path):
    """`PeftModel.save_pretrained` writes adapter_model.* with `base_model.model.` keys and the
    scale in adapter_config.json: diffusers loaded none of it ("holds no weights")."""
    from safetensors.torch import load_file, save_file

    from augment.generate.pipelines import LORA_WEIGHTS_FILE, check_models
    from augment.generate.tiny import save_tiny_lora

    job = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    made = save_tiny_lora(tmp_path / "made")
    peft = tmp_path / "peft"
    peft.mkdir()
    state = load_file(made / LORA_WEIGHTS_FILE)
    save_file(
        {
            key.replace("unet.", "base_model.model.", 1)
            .replace(".lora.down.", ".lora_A.")
            .replace(".lora.up.", ".lora_B."): tensor
            for key, tensor in state.items()
        },
        peft / "adapter_model.safetensors",
    )
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["to_k", "to_q"]}
    (peft / "adapter_config.json").write_text(json.dumps(config))  # alpha / r: a scale of 2
    expected = render(job, loras=[{"path": str(made), "scale": 2.0}])
    found = render(job, loras=[{"path": str(peft)}])
    assert (
        max(np.abs(pixels(a) - pixels(b)).max() for a, b in zip(found, expected, strict=True)) <= 1
    )
    assert not all(
        np.array_equal(pixels(a), pixels(b))
        for a, b in zip(found, render(job, loras=[{"path": str(made)}]), strict=True)
    )
    (peft / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"x": 2}}))
    with pytest.raises(ModelError, match="sets ranks or alphas per layer"):
        render(job, loras=[{"path": str(peft)}])
    xl = changed(parse_spec(job), model="builtin:tiny-sdxl", family="sdxl")
    xl = changed(xl, loras=[{"path": str(peft)}])  # its family is read from its keys too
    with pytest.raises(ModelError, match="made for text features of width 32"):
        check_models(xl.generation, xl.paths)


def test_a_lora_of_the_other_family_is_refused():
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))
    with pytest.raises(
        ModelError, match=r"loras\[0\].path: LoRA .* does not fit this sd model: "
    ) as error:
        make_generator(changed(spec, loras=[{"path": "builtin:tiny-lora-sdxl"}]))
    assert "size mismatch" in str(error.value) and "\n" not in str(error.value)


def test_a_model_folder_that_does_not_fit_the_family_or_mode_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Each of these failed every render, after the run had written its output folder, as a
    fault of augment: an SD folder taken for SDXL, an SDXL one for SD, an SDXL refiner, an
    inpainting UNet in txt2img; and a single file whose config folder is of another family."""
    import shutil

    from augment.generate.ldm_checkpoint import write_ldm_checkpoint
    from augment.generate.pipelines import check_models, load_txt2img_pipeline
    from augment.generate.tiny import save_tiny_sd, save_tiny_sd_inpaint, save_tiny_sdxl
    from augment.registry import resolve

    sd, xl = save_tiny_sd(tmp_path / "sd"), save_tiny_sdxl(tmp_path / "xl")
    inpaint = save_tiny_sd_inpaint(tmp_path / "inpaint")
    refiner = tmp_path / "refiner"
    shutil.copytree(xl, refiner)
    for part in ("text_encoder", "tokenizer"):
        shutil.rmtree(refiner / part)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(
        json.dumps({**index, "text_encoder": [None, None], "tokenizer": [None, None]})
    )
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))
    for model, family, words in [
        (sd, "sdxl", "has no text_encoder_2 and tokenizer_2, which SDXL renders with"),
        (xl, "sd", "is an SDXL model (it has text_encoder_2); set family: sdxl"),
        (refiner, "auto", "has no text_encoder: an SDXL refiner"),
        (inpaint, "auto", "is an inpainting model (its UNet reads 9 channels"),
    ]:
        wrong = changed(spec, model=str(model), family=family)
        with pytest.raises(ModelError, match=re.escape(words)):
            check_models(wrong.generation, wrong.paths)
    right = changed(spec, model=str(xl), family="auto")
    check_models(right.generation, right.paths)

    # A single file described by another family's configs failed with a bare key name.
    checkpoint = write_ldm_checkpoint(
        load_txt2img_pipeline(str(sd), device="cpu"), tmp_path / "sd.safetensors"
    )
    wrong = changed(spec, model=str(checkpoint), config=str(xl))
    with pytest.raises(ModelError, match="reads text features of width 32, the folder's 64"):
        check_models(wrong.generation, wrong.paths)
    in_hub_cache(xl, "acme/tiny-xl", tmp_path / "hub", monkeypatch)  # and a cached hub id's
    wrong = changed(spec, model=str(checkpoint), config="acme/tiny-xl")
    with pytest.raises(ModelError, match="reads text features of width 32, the folder's 64"):
        check_models(wrong.generation, wrong.paths)
    right = changed(spec, model=str(checkpoint), config=str(sd))
    check_models(right.generation, right.paths)
    # A file's parts are its config folder's, checked as a folder is (every render failed).
    for config, family, words in [
        (sd, "sdxl", f"generation.config: {sd} has no text_encoder_2 and tokenizer_2"),
        (inpaint, "auto", f"generation.config: {inpaint} is an inpainting model"),
    ]:
        wrong = changed(spec, model=str(checkpoint), config=str(config), family=family)
        with pytest.raises(ModelError, match=re.escape(words)):
            check_models(wrong.generation, wrong.paths)
    # Its adapters are checked against that config folder, as a folder's are against itself.
    lora = changed(right, loras=[{"path": str(resolve("model", "tiny-lora-sdxl", "test"))}])
    with pytest.raises(ModelError, match="made for text features of width 64, this model's"):
        check_models(lora.generation, lora.paths)


def test_a_folder_of_fp16_variant_weights_only_loads(tmp_path: Path):
    """A hub download of variant="fp16" holds unet/diffusion_pytorch_model.fp16.safetensors and
    no plain file: it failed to load, naming a .bin it had never held."""
    import shutil

    from augment.generate.tiny import save_tiny_sd

    plain = save_tiny_sd(tmp_path / "plain")
    variant = tmp_path / "variant"
    shutil.copytree(plain, variant)
    for weights in variant.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".fp16.safetensors"))
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))
    items = plan_for(spec)[:2]
    renders = [
        [pixels(r).tobytes() for r in make_generator(changed(spec, model=str(m)))(items)]
        for m in (plain, variant)
    ]
    assert renders[0] == renders[1]


def test_a_lora_of_another_family_in_kohya_or_torch_layout_is_refused_before_the_run(
    tmp_path: Path,
):
    """The family check read diffusers' keys in .safetensors only: an SDXL LoRA in kohya's
    layout, or saved by torch, went on to fail after the run had written its output folder,
    with a dozen lines of size mismatches."""
    import torch
    from safetensors.torch import load_file, save_file

    from augment.generate.pipelines import check_models
    from augment.registry import resolve

    folder = Path(resolve("model", "tiny-lora-sdxl", "test"))
    state = load_file(next(folder.glob("*.safetensors")))
    kohya = {}
    for key, tensor in state.items():
        module, _, kind = key.removeprefix("unet.").partition(".lora.")
        kohya[f"lora_unet_{module.replace('.', '_')}.lora_{kind}"] = tensor.contiguous()
    save_file(kohya, tmp_path / "kohya-sdxl.safetensors")
    torch.save(state, tmp_path / "sdxl.bin")
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))  # an SD model
    for weights in ("kohya-sdxl.safetensors", "sdxl.bin"):
        wrong = changed(spec, loras=[{"path": str(tmp_path / weights)}])
        with pytest.raises(ModelError, match=r"made for text features of width 64, this model's"):
            check_models(wrong.generation, wrong.paths)


def test_an_embedding_of_another_family_is_refused_before_the_run(tmp_path: Path):
    """diffusers refused these once the run had begun, printing the tensors ('Loaded state
    dictionary is incorrect: {'clip_g': tensor([[ 4.9497e+00, ...') or unfilled placeholders."""
    import torch
    from safetensors.torch import save_file

    from augment.generate.pipelines import check_models
    from augment.generate.tiny import save_tiny_textual_inversion, save_tiny_textual_inversion_sdxl

    fits = save_tiny_textual_inversion(tmp_path / "sd.safetensors")
    xl = save_tiny_textual_inversion_sdxl(tmp_path / "xl.safetensors")
    save_file({"<wide>": torch.zeros(1, 64)}, tmp_path / "wide.safetensors")
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))  # an SD model: width 32
    for embedding, words in [
        (xl, "an SDXL embedding (clip_l and clip_g) on an SD model"),
        (tmp_path / "wide.safetensors", "its vectors have 64 values, this model's text encoder"),
    ]:
        wrong = changed(spec, textual_inversions=[{"path": str(embedding), "token": "<t>"}])
        with pytest.raises(ModelError, match=re.escape(words)):
            check_models(wrong.generation, wrong.paths)
    right = changed(spec, textual_inversions=[{"path": str(fits), "token": "<t>"}])
    check_models(right.generation, right.paths)


def test_an_embedding_token_that_changes_no_image_or_replaces_a_word_is_warned_of(
    tmp_path: Path, caplog
):
    """Both rendered without a word: a token in no template left every image as it was; the
    token "digit" turned every "digit" of the prompts into the embedding."""
    from augment.generate.tiny import save_tiny_textual_inversion
    from augment.job import warn_inversion_tokens

    embedding = str(save_tiny_textual_inversion(tmp_path / "e.safetensors"))
    spec = parse_spec(
        TINY_JOB.replace("OUT_DIR", "unused").replace("builtin:tiny-sd", "builtin:digits")
    )
    for token, words in [
        ("<unsaid>", "'<unsaid>' is in no template, negative prompt or attribute"),
        ("digit", "'digit' is a word the tokenizer already knows"),
    ]:
        caplog.clear()
        warn_inversion_tokens(
            changed(spec, textual_inversions=[{"path": embedding, "token": token}])
        )
        assert any(words in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    said = spec.model_dump()
    said["prompts"]["templates"] = ["a handwritten digit {name}, <style>"]
    warn_inversion_tokens(
        changed(load_spec(said), textual_inversions=[{"path": embedding, "token": "<style>"}])
    )
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_replacement_vae_decodes_and_is_named_in_each_image(tmp_path: Path):
    """generation.vae swaps the decoder (a VAE folder, a pipeline folder's vae/, or one LDM
    .safetensors or PyTorch file); one that makes other latents (or scales them otherwise), or
    is missing, is refused before anything renders."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from augment.generate.engine import run_provenance
    from augment.generate.ldm_checkpoint import ldm_vae_state_dict, write_ldm_vae
    from augment.generate.pipelines import check_models
    from augment.generate.tiny import build_vae
    from augment.provenance import model_content_hash, parameters_text

    job = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    torch.manual_seed(1)
    build_vae().save_pretrained(tmp_path / "vae")
    plain = render(job)
    swapped = render(job, vae=str(tmp_path / "vae"))
    pairs = zip(plain, swapped, strict=True)
    assert all(np.abs(pixels(a) - pixels(b)).max() > 20 for a, b in pairs)
    own = render(job, vae="builtin:tiny-sd")  # the model's own vae/, from its pipeline folder
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, own, strict=True))
    torch.manual_seed(1)
    file = write_ldm_vae(build_vae(), tmp_path / "vae.safetensors")  # as sdxl_vae.safetensors
    single = render(job, vae=str(file))
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(swapped, single, strict=True))
    torch.manual_seed(1)
    weights = {"state_dict": ldm_vae_state_dict(build_vae())}  # as community .vae.pt files ship
    torch.save(weights, tmp_path / "community.vae.pt")
    community = render(job, vae=str(tmp_path / "community.vae.pt"))
    assert all(
        np.array_equal(pixels(a), pixels(b)) for a, b in zip(swapped, community, strict=True)
    )

    spec = changed(parse_spec(job), vae=str(tmp_path / "vae"))
    (adapter,) = run_provenance(spec).adapters
    assert (adapter.kind, adapter.hash) == ("vae", model_content_hash(tmp_path / "vae"))
    record = {"prompt": "p", "steps": 3, "scheduler": "ddim", "guidance": 7.5, "seed": 1}
    text = parameters_text({**record, "width": 32, "height": 32}, run_provenance(spec))
    assert f"VAE hash: {adapter.hash[:10]}, VAE: vae" in text
    assert json.loads(swapped[0]["settings"])["vae"] == str(tmp_path / "vae")

    own_vae = changed(spec, vae="builtin:tiny-sd")  # hashed: the vae/ loaded, not the folder
    (adapter,) = run_provenance(own_vae).adapters
    assert adapter.hash == model_content_hash(Path(own_vae.paths.vae) / "vae")
    weights = build_vae().state_dict()  # a .safetensors file that holds no VAE
    save_file({"x": weights["decoder.conv_in.weight"]}, str(tmp_path / "no-vae.safetensors"))
    with pytest.raises(ModelError, match=r"^generation.vae: cannot load a VAE"):
        make_generator(changed(spec, vae=str(tmp_path / "no-vae.safetensors")))

    def checked(vae: Path) -> None:
        """A misfit VAE is refused by the checks a run makes before it writes anything."""
        misfit = changed(spec, vae=str(vae))
        check_models(misfit.generation, misfit.paths)

    AutoencoderKL(block_out_channels=[32], latent_channels=8).save_pretrained(tmp_path / "wide")
    with pytest.raises(ModelError, match=r"vae: .* makes latents of 8 channels, the model's UNet"):
        checked(tmp_path / "wide")
    deep = AutoencoderKL(  # 4 channels, but 32 px images into 4 px latents, not 16 px
        block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4,
    )  # fmt: skip
    deep.save_pretrained(tmp_path / "deep")
    with pytest.raises(ModelError, match=r"vae: .* shrinks images 8x .* the model's own VAE 2x"):
        checked(tmp_path / "deep")
    other_space = build_vae()  # SDXL's VAE on SD: the same shapes, another latent scale
    other_space.register_to_config(scaling_factor=0.13025)
    other_space.save_pretrained(tmp_path / "sdxl-vae")
    with pytest.raises(ModelError, match=r"vae: .* scales its latents by 0.13025, the model's own"):
        checked(tmp_path / "sdxl-vae")
    deeper = AutoencoderKL(  # its last levels fit the model's: diffusers alone loads it
        block_out_channels=[32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4,
    )  # fmt: skip
    deeper_file = write_ldm_vae(deeper, tmp_path / "deeper.safetensors")
    with pytest.raises(ModelError, match=r"vae: .* has 3 levels, the model's own VAE 2"):
        checked(deeper_file)
    torch.save(ldm_vae_state_dict(deeper), tmp_path / "deeper.bin")
    with pytest.raises(ModelError, match=r"vae: .*deeper.bin has 3 levels, the model's own VAE 2"):
        checked(tmp_path / "deeper.bin")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"vae: cannot read .*junk.pt as a checkpoint"):
        checked(tmp_path / "junk.pt")
    (tmp_path / "notes.txt").write_text("a VAE?")
    with pytest.raises(ModelError, match=r"not a checkpoint \(.safetensors, .ckpt, .pt or .bin\)"):
        checked(tmp_path / "notes.txt")
    from augment.generate.tiny import build_unet

    build_unet().save_pretrained(tmp_path / "unet")
    with pytest.raises(ModelError, match=r"vae: .*unet is a UNet2DConditionModel, not a VAE"):
        checked(tmp_path / "unet")
    (tmp_path / "no-vae" / "unet").mkdir(parents=True)
    (tmp_path / "no-vae" / "model_index.json").write_text("{}")  # a pipeline without its vae/
    with pytest.raises(ModelError, match=r"vae: .*no-vae/vae holds no config.json"):
        checked(tmp_path / "no-vae")
    missing = changed(spec, vae="vaes/nope")
    with pytest.raises(ModelError, match=r"^generation.vae: .*no such file or folder"):
        check_models(missing.generation, missing.paths)


def test_a_vae_from_a_cached_hub_pipeline_loads_its_vae_subfolder(tmp_path, monkeypatch):
    """generation.vae: a hub id of a whole pipeline in the cache decodes with its vae/ (as a
    local pipeline folder does), not the repository's root, which holds no VAE."""

    from augment.generate.engine import run_provenance
    from augment.provenance import model_content_hash

    tiny = changed(parse_spec(TINY_JOB.replace("OUT_DIR", "out"))).paths.model
    snapshot = in_hub_cache(Path(tiny), "acme/tiny-sd", tmp_path / "hub", monkeypatch)
    job = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    plain, cached = render(job), render(job, vae="acme/tiny-sd")
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, cached, strict=True))
    (adapter,) = run_provenance(changed(parse_spec(job), vae="acme/tiny-sd")).adapters
    assert adapter.hash == model_content_hash(snapshot / "vae")  # as a folder


def test_controlnet_of_the_other_family_is_refused_before_the_run(tmp_path: Path):
    """It was refused only once a worker loaded it, after the run had written OUT."""
    from augment.generate.pipelines import check_models

    job = (REPO / "jobs" / "tiny" / "controlnet.yaml").read_text()
    spec = parse_spec(job.replace("builtin:tiny-controlnet", "builtin:tiny-controlnet-sdxl"))
    words = "expects text features of width 64, the model's UNet reads 32"
    with pytest.raises(ModelError, match=words):
        check_models(spec.generation, spec.paths)
    with pytest.raises(ModelError, match=words):  # a hub id's, found when loaded
        make_generator(spec)
    check_models(parse_spec(job).generation, parse_spec(job).paths)


def test_safety_checker_sets_the_nsfw_flag_and_exports_leave_those_out(tmp_path: Path):
    from augment.generate.tiny import save_tiny_sd_with_safety_checker

    model = save_tiny_sd_with_safety_checker(tmp_path / "checked", flag_everything=True)
    job = TINY_JOB.replace("builtin:tiny-sd", str(model)).replace("OUT_DIR", str(tmp_path / "o"))
    path = tmp_path / "job.yaml"
    path.write_text(job)
    result = augment("run", str(path), "--distributor", "local")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "o" / "shards").to_pylist()
    assert rows and all(row["nsfw"] and not row["float32_retry"] for row in rows)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"]["nsfw"] == len(rows)
    coco = json.loads((tmp_path / "o" / "coco" / "annotations.json").read_text())
    assert coco["images"] == []
    unchecked = render(job, safety_checker=False)
    assert not any(r["nsfw"] for r in unchecked)


def test_single_file_checkpoint_renders_like_its_folder(tmp_path: Path):
    from augment.generate.ldm_checkpoint import write_ldm_checkpoint
    from augment.generate.pipelines import load_txt2img_pipeline
    from augment.generate.tiny import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "tiny")
    checkpoint = write_ldm_checkpoint(
        load_txt2img_pipeline(str(folder), device="cpu"), tmp_path / "tiny.safetensors"
    )
    job = TINY_JOB.replace("OUT_DIR", "unused").replace("builtin:tiny-sd", str(folder))
    from_folder = render(job)
    from_file = render(job, model=str(checkpoint), config=str(folder))
    # The same pixels; each PNG names its own model file (provenance), so the bytes differ.
    assert all(
        np.array_equal(pixels(a), pixels(b)) for a, b in zip(from_file, from_folder, strict=True)
    )
    with pytest.raises(ModelError, match="generation.config: .* is a single-file checkpoint"):
        render(job, model=str(checkpoint))


def test_sources_from_an_image_folder_and_from_an_augment_run(tmp_path: Path):
    """img2img from class folders, then from the Parquet shards of a previous run."""
    for digit in ("three", "seven", "cat"):
        (tmp_path / "folder" / digit).mkdir(parents=True)
        Image.new("RGB", (40, 24), (200, 200, 200)).save(tmp_path / "folder" / digit / "a.png")
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    job = job.replace("builtin:digits-canvases", str(tmp_path / "folder"))
    spec = parse_spec(job)
    items = plan_for(spec)
    assert sorted(i.source_image_id for i in items) == ["seven/a", "three/a"]  # no 'cat' concept
    assert {(i.width, i.height) for i in items} == {(96, 56)}  # aspect kept, multiples of 8
    records = make_generator(spec)(items)
    assert {(r["width"], r["height"]) for r in records} == {(96, 56)}

    run = tmp_path / "run"
    txt2img = REPO / "jobs" / "tiny" / "txt2img.yaml"
    assert augment("run", str(txt2img), "--out", str(run), "--distributor", "local").returncode == 0
    source = SourceSpec(path=str(run), limit=3)
    spec = parse_spec(
        job.replace(str(tmp_path / "folder"), str(run)).replace("limit: 8", "limit: 3")
    )
    items = plan_for(spec)
    assert len(items) == 3 and spec.source == source
    ids = set(pq.read_table(run / "shards", columns=["item_id"]).column("item_id").to_pylist())
    assert {item.source_image_id for item in items} <= ids


def test_a_source_image_moved_to_another_class_stops_the_resumed_run(tmp_path: Path):
    """Its render under the old label stayed in the shards and exports beside the new one.
    The run now stops before rendering and keeps what OUT holds; adding images resumes."""
    folder = tmp_path / "folder"
    for digit, names in (("three", ["a", "b"]), ("seven", ["c"])):
        (folder / digit).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (32, 32), (90, 90, 90)).save(folder / digit / f"{name}.png")
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    job = job.replace("builtin:digits-canvases", str(folder)).replace("steps: 10", "steps: 4")
    path, out = tmp_path / "job.yaml", tmp_path / "out"
    path.write_text(job.replace("out/tiny/img2img", str(out)))
    assert augment("run", str(path), "--distributor", "local").returncode == 0
    shards = sorted(p.read_bytes() for p in (out / "shards").iterdir())

    (folder / "three" / "b.png").rename(folder / "seven" / "b.png")  # it was a seven
    result = augment("run", str(path), "--distributor", "local")
    assert result.returncode == 2
    assert "no longer has under that label (e.g. three/b, rendered as three)" in result.stderr
    assert sorted(p.read_bytes() for p in (out / "shards").iterdir()) == shards

    (folder / "seven" / "b.png").rename(folder / "three" / "b.png")
    Image.new("RGB", (32, 32)).save(folder / "seven" / "d.png")  # more data: resumed
    result = augment("run", str(path), "--distributor", "local")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "shards", columns=["source_image_id"]).column(0).to_pylist()
    assert sorted(rows) == ["seven/c", "seven/d", "three/a", "three/b"]


def test_numbered_class_folders_are_not_taken_for_category_ids(tmp_path: Path):
    """MNIST's folders 0..9 matched the digits' category ids 1..10: every image was rendered
    as the next digit's class."""
    for folder in ("0", "1"):
        (tmp_path / "folder" / folder).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "folder" / folder / "a.png")
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    spec = parse_spec(job.replace("builtin:digits-canvases", str(tmp_path / "folder")))
    with pytest.raises(SpecError, match="labels seen: 0, 1.*a number is not matched"):
        plan_for(spec)


def test_an_image_folder_skips_hidden_files_and_refuses_two_files_of_one_id(tmp_path: Path, caplog):
    """macOS's `._a.png` made the run end in an error; `a.png` beside `a.jpg` rendered `a.png`
    twice and never `a.jpg`; a folder inside a class folder was left out without a word."""
    from augment.sources import SourceSet

    folder = tmp_path / "folder" / "three"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "folder" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "folder" / ".thumbs" / "a.png")
    (folder / "batch1").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "batch1" / "b.png")
    sources = SourceSet(tmp_path / "folder")
    assert [i.id for i in sources.images] == ["three/a"] and sources.unreadable == []
    assert "1 folder(s) inside class folders are not read, first " in caplog.text
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    with pytest.raises(SpecError, match=r"a.jpg and .*a.png would both be image three/a"):
        SourceSet(tmp_path / "folder")


def test_source_images_are_read_as_a_viewer_shows_them(tmp_path: Path):
    """A phone photo stored sideways is turned by its EXIF orientation (its boxes and masks
    are drawn on it upright), a 16-bit grey scan keeps its shades (converting it clipped
    every shade above 255 to white), a transparent PNG is laid on white (it was black under
    its ink), and a GIF is an image like the others."""
    from augment.bench.data import load_real
    from augment.sources import SourceSet

    folder = tmp_path / "folder" / "three"
    folder.mkdir(parents=True)
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:, :20] = 255  # the left half white as stored: the top half, shown
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    Image.fromarray(stored).save(folder / "photo.jpg", exif=exif, quality=95)
    Image.fromarray((np.arange(32)[None, :].repeat(8, 0) * 2048).astype(np.uint16)).save(
        folder / "scan.png"
    )
    Image.new("P", (16, 16), 3).save(folder / "old.gif")
    ink = np.zeros((8, 8, 4), np.uint8)
    ink[2:6, 3:5, 3] = 255  # black ink on a transparent background
    Image.fromarray(ink, "RGBA").save(folder / "ink.png")

    sources = SourceSet(tmp_path / "folder")
    assert {i.id: (i.width, i.height) for i in sources.images} == {
        "three/ink": (8, 8),
        "three/old": (16, 16),
        "three/photo": (24, 40),
        "three/scan": (32, 8),
    }
    photo = np.asarray(sources.pixels("three/photo"), dtype=int)
    assert photo.shape == (40, 24, 3)
    assert photo[:18].mean() > 240 and photo[22:].mean() < 15
    drawn = np.asarray(sources.pixels("three/ink"))[..., 0]  # laid on white, as shown
    assert drawn[0, 0] == 255 and drawn[3, 3] == 0
    scan = np.asarray(sources.pixels("three/scan"))[0, :, 0]
    assert len(np.unique(scan)) == 32 and np.all(np.diff(scan.astype(int)) > 0)
    assert scan[-1] == round(31 * 2048 * 255 / 65535)

    (tmp_path / "folder" / "seven").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "folder" / "seven" / f"{name}.png")
    real = load_real(str(tmp_path / "folder"), 8, test_fraction=0.5)
    everything = {
        **dict(zip(real.pool.ids, real.pool.images, strict=True)),
        **dict(zip(real.test.ids, real.test.images, strict=True)),
    }
    assert len(everything) == 6  # the GIF too
    assert everything["three/photo.jpg"][:3].mean() > 200  # upright: white on top


def test_a_watermark_too_big_for_a_narrow_source_is_refused_before_any_render(tmp_path: Path):
    (tmp_path / "folder" / "three").mkdir(parents=True)
    Image.new("RGB", (40, 24)).save(tmp_path / "folder" / "three" / "wide.png")
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    job = job.replace("builtin:digits-canvases", str(tmp_path / "folder"))
    job = job.replace("height: 96", "height: 256").replace("width: 96", "width: 256")
    assert {(i.width, i.height) for i in plan_for(parse_spec(job))} == {(256, 152)}
    watermarked = parse_spec(job.replace("  batch_size: 4", "  batch_size: 4\n  watermark: true"))
    with pytest.raises(SpecError, match=r"first three/wide at 256x152 .* longer side 256"):
        plan_for(watermarked)


def test_mode_and_source_mistakes_are_one_line_errors(tmp_path: Path):
    job = TINY_JOB.replace("OUT_DIR", str(tmp_path / "out"))
    cases = {
        "  batch_size: 4\n  mode: img2img\n": "mode img2img starts from real images: add a source:",
        "  batch_size: 4\n  mode: controlnet\nsource: {path: x}\n": "needs a controlnet: section",
        "  batch_size: 4\n  mode: img2img\n  strength: 0.1\nsource: {path: x}\n": (
            "leaves no denoising step"
        ),
        "  batch_size: 4\n  mode: img2img\nsource: {path: nowhere}\n": (
            "source.path: 'nowhere' not found"
        ),
        "  batch_size: 4\n  mode: interpolate\n  interpolate: {between: prompts}\n": (
            "'a handwritten digit zero' is followed by itself; give prompts.templates a second"
        ),
    }
    # two templates, but one image a concept: one prompt variant, nothing to go to
    interpolate = "  batch_size: 4\n  mode: interpolate\n  interpolate: {between: prompts}\n"
    path = tmp_path / "one.yaml"
    path.write_text(
        job.replace("images_per_concept: 3", "images_per_concept: 1")
        .replace('{name}"]', '{name}", "a digit {name}"]')
        .replace("  batch_size: 4\n", interpolate)
    )
    result = augment("run", str(path), "--distributor", "local")
    assert "set prompts.images_per_concept to 2 or more (a sequence goes" in result.stderr
    for addition, expected in cases.items():
        path = tmp_path / "job.yaml"
        path.write_text(job.replace("  batch_size: 4\n", addition))
        result = augment("run", str(path), "--distributor", "local")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert expected in lines[0], lines[0]


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "controlnet", "interpolate"])
def test_sdxl_family_renders_every_mode(mode: str):
    """The SDXL pipelines (two text encoders, pooled embeddings) behind each mode."""
    job = (REPO / "jobs" / "tiny" / f"{mode}.yaml").read_text()
    job = job.replace("builtin:tiny-sd-inpaint", "builtin:tiny-sdxl")
    job = job.replace("builtin:tiny-controlnet", "builtin:tiny-controlnet-sdxl")
    job = job.replace("model: builtin:tiny-sd\n", "model: builtin:tiny-sdxl\n")
    job = job.replace("model: builtin:digits", "model: builtin:tiny-sdxl")
    spec = parse_spec(job)
    items = plan_for(spec)[:3]
    records = make_generator(spec)(items)
    assert len(records) == 3
    assert {(r["mode"], r["family"]) for r in records} == {(mode, "sdxl")}
    assert not any(r["nan"] for r in records)


def test_inpaint_from_mask_files(tmp_path: Path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in ("1", "2"):  # the first two canvases (COCO ids 1, 2)
        mask = np.zeros((96, 96), np.uint8)
        mask[32:64, 32:64] = 255
        Image.fromarray(mask).save(masks / f"{stem}.png")
    job = (REPO / "jobs" / "tiny" / "inpaint.yaml").read_text()
    job = job.replace(
        "{source: boxes, per: object, margin: 2}", f"{{source: files, files: {masks}}}"
    )
    job = job.replace("limit: 6", "limit: 2")
    spec = parse_spec(job)
    items = plan_for(spec)
    assert [i.source_image_id for i in items] == ["1", "2"] and items[0].target is None
    generator = make_generator(spec)
    records = generator(items)
    assert len(records) == 2 and not any(r["nan"] for r in records)
    mask = np.asarray(generator.mask(items[0]))  # what the pipeline got: the file, at 64 px
    assert mask.shape == (64, 64) and mask[32, 32] == 255 and mask[5, 5] == 0
    assert (mask == 255).sum() == pytest.approx(64 * 64 / 9, rel=0.1)

    Image.fromarray(np.zeros((48, 64), np.uint8)).save(masks / "2.png")
    with pytest.raises(SpecError, match=r"2.png is 64x48 but its source image 2 is 96x96"):
        plan_for(spec)
    (masks / "2.png").unlink()
    with pytest.raises(SpecError, match=r"no mask for source image 2 .*expected 2.png"):
        plan_for(spec)


def test_render_settings_reach_the_pipeline():
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))
    settings = {
        "vae_slicing": True,
        "vae_tiling": True,
        "attention": "eager",
        "scheduler": "EulerAncestral",
    }
    pipe = make_generator(changed(spec, **settings)).pipe
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"AttnProcessor"}


def test_sdxl_textual_inversion_loads_into_both_text_encoders(tmp_path: Path):
    from augment.generate.tiny import save_tiny_textual_inversion_sdxl

    embedding = save_tiny_textual_inversion_sdxl(tmp_path / "sks.safetensors")
    job = (REPO / "jobs" / "tiny" / "sdxl.yaml").read_text()
    job = job.replace('{name}"]', '{name} <sks>"]')
    spec = parse_spec(job)
    inversion = [{"path": str(embedding), "token": "<sks>"}]
    plain = make_generator(spec)
    with_token = make_generator(changed(spec, textual_inversions=inversion))
    for tokenizer in (with_token.pipe.tokenizer, with_token.pipe.tokenizer_2):
        assert "<sks>" in tokenizer.get_vocab()
    items = plan_for(spec)[:2]
    difference = max(
        np.abs(pixels(a) - pixels(b)).max()
        for a, b in zip(plain(items), with_token(items), strict=True)
    )
    assert difference > 0
    # the same embedding saved by torch (.pt, as A1111 tools write): read, not taken for
    # safetensors (a fault of augment)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(embedding), tmp_path / "sks.pt")
    as_pt = [{"path": str(tmp_path / "sks.pt"), "token": "<sks>"}]
    with_pt = make_generator(changed(spec, textual_inversions=as_pt))
    assert [pixels(a).tobytes() for a in with_pt(items)] == [
        pixels(b).tobytes() for b in with_token(items)
    ]


def test_a_coco_source_without_annotations_says_its_images_have_no_label(tmp_path: Path):
    (tmp_path / "images").mkdir()
    for n in (1, 2):
        Image.new("RGB", (96, 96)).save(tmp_path / "images" / f"{n}.png")
    images = [{"id": n, "file_name": f"{n}.png", "width": 96, "height": 96} for n in (1, 2)]
    categories = [{"id": 1, "name": "zero"}]
    coco = {"images": images, "annotations": [], "categories": categories}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    job = job.replace("builtin:digits-canvases", str(tmp_path / "annotations.json"))
    with pytest.raises(SpecError, match=r"labels seen: none; 2 of 2 images have no label\)"):
        plan_for(parse_spec(job))


def small_coco(folder: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    """Two 96 px images of zero and one, with `annotations` as given."""
    (folder / "images").mkdir(parents=True)
    for n in (1, 2):
        Image.new("RGB", (96, 96)).save(folder / "images" / f"{n}.png")
    images = images or [
        {"id": n, "file_name": f"{n}.png", "width": 96, "height": 96} for n in (1, 2)
    ]
    categories = [{"id": 1, "name": "zero"}, {"id": 2, "name": "one"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return folder / "annotations.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [10, 9, 17]}, r"annotation 1 has bbox \[10, 9, 17\]; a box is \[x, y, width"),
        ({"bbox": [10, 9, -17, 27]}, "annotation 1 has bbox .* of no width or height"),
        ({"bbox": [200, 200, 30, 30]}, "annotation 1 has bbox .* outside its 96x96 image"),
        ({"category_id": 99}, "annotation 1 has category_id 99, which categories does not list"),
        ({"image_id": "twice"}, "lists image id 1 twice"),
        ({"image_id": 42}, "annotation 1 has image_id 42, which images does not list"),
        ({"width": 0}, "gives image 1 the size 0x96; give its width and height in pixels"),
        ({"width": 192}, r"says image 1 is 192x96, but .*1.png is 96x96 as shown"),
    ],
    ids=["short", "negative", "outside", "category", "image-id", "orphan", "no-size", "aspect"],
)
def test_a_coco_source_with_a_box_that_is_no_box_is_named_before_planning(
    tmp_path: Path, change, message
):
    """Each was a fault deep in planning, or a label of nothing in the exports; an orphan
    annotation's image was left out, and a size that is not the file's moved its boxes."""
    change = dict(change)
    width = change.pop("width", 96)
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 9, 17, 27], **change}
    images = [{"id": n, "file_name": f"{n}.png", "width": width, "height": 96} for n in (1, 2)]
    if change.get("image_id") == "twice":
        box["image_id"] = 1
        images = [{"id": 1, "file_name": f"{n}.png", "width": 96, "height": 96} for n in (1, 2)]
    annotations = small_coco(tmp_path, [box], images)
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    job = job.replace("builtin:digits-canvases", str(annotations))
    with pytest.raises(SpecError, match=message):
        plan_for(parse_spec(job))


def test_a_coco_crowd_region_is_not_carried_as_an_object(tmp_path: Path, caplog):
    """An `iscrowd: 1` region (many objects, one box) became an ordinary instance in the
    exports, and its box decided the image's class."""
    one = {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 9, 17, 27]}
    crowd = {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 90, 90], "iscrowd": 1}
    annotations = small_coco(tmp_path, [one, crowd])
    unreadable: list[dict] = []
    (first, second) = read_coco(annotations, unreadable)
    assert [(b.label, b.bbox) for b in first.boxes] == [("one", (10, 9, 17, 27))]
    assert first.main_label() == "one" and not second.boxes
    assert "1 crowd region(s) (iscrowd: 1) not carried as labels" in caplog.text


def test_a_coco_source_in_cocos_own_layout_finds_its_images(tmp_path: Path):
    """`annotations/instances_val2017.json` with `val2017/` beside `annotations/`, as COCO is
    downloaded: every image was 'unreadable', and a wrong layout named image after image."""
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 9, 17, 27]}
    small_coco(tmp_path / "coco", [box])
    (tmp_path / "coco" / "images").rename(tmp_path / "coco" / "val2017")
    (tmp_path / "coco" / "annotations").mkdir()
    official = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    (tmp_path / "coco" / "annotations.json").rename(official)
    job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
    plan = plan_for(parse_spec(job.replace("builtin:digits-canvases", str(official))))
    assert {item.source_image_id for item in plan} == {"1"}  # the one with a label
    unreadable: list[dict] = []
    found = read_coco(official, unreadable)
    assert [Path(i.location).parent.name for i in found] == ["val2017"] * 2 and not unreadable
    (tmp_path / "coco" / "val2017").rename(tmp_path / "coco" / "elsewhere")
    with pytest.raises(SpecError, match=r"none of the images .*instances_val2017.json lists is "):
        plan_for(parse_spec(job.replace("builtin:digits-canvases", str(official))))


def test_a_parquet_source_may_name_its_images_by_path(tmp_path: Path):
    """A column of file paths, or Hugging Face's {bytes: None, path} (they were a fault, and
    'no readable images')."""
    import pyarrow as pa

    small_coco(tmp_path / "coco", [])
    paths = [str(tmp_path / "coco" / "images" / f"{n}.png") for n in (1, 2)]
    for name, column in {
        "paths": paths,
        "structs": [{"bytes": None, "path": path} for path in paths],
    }.items():
        pq.write_table(
            pa.table({"image": column, "label": ["zero", "one"]}), tmp_path / f"{name}.parquet"
        )
        job = (REPO / "jobs" / "tiny" / "img2img.yaml").read_text()
        job = job.replace("builtin:digits-canvases", str(tmp_path / f"{name}.parquet"))
        items = plan_for(parse_spec(job))
        assert len(items) == 2, name


def test_concepts_no_source_image_matches_are_named(tmp_path: Path, caplog):
    """A concept whose folder or label the source lacks got no image, and a run said nothing
    (with parquet and coco exports, no line at all)."""
    from augment.config import load_spec

    for name in ("zero", "one"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), "white").save(tmp_path / "src" / name / "a.png")
    overrides = {"source.path": str(tmp_path / "src"), "taxonomy.max_concepts": 4}
    spec = load_spec(REPO / "jobs" / "tiny" / "img2img.yaml", overrides)
    items = plan_for(spec)
    assert {item.concept_name for item in items} == {"zero", "one"}
    assert "2 concept(s) of the job match no source image and get no image: two, three" in (
        caplog.text
    )


def test_a_source_label_that_names_two_concepts_alike_matches_neither(tmp_path: Path, caplog):
    """A folder C++ of a job with concepts C++ and C# (both read as 'c') gave its images to the
    first of them, unsaid."""
    from augment.config import load_spec

    for name in ("C++", "C#", "plain"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), "white").save(tmp_path / "src" / name / "a.png")
    (tmp_path / "list.yaml").write_text(
        "concepts:\n  - {name: C++, id: cpp}\n  - {name: C#, id: csharp}\n  - plain\n"
    )
    overrides = {
        "source.path": str(tmp_path / "src"),
        "taxonomy.source": str(tmp_path / "list.yaml"),
    }
    spec = load_spec(REPO / "jobs" / "tiny" / "img2img.yaml", overrides)
    items = plan_for(spec)
    assert {(item.concept_name, item.source_image_id) for item in items} == {("plain", "plain/a")}
    assert (
        "source labels that name several concepts of the job alike, not used: C#, C++ (C# names "
        "cpp and csharp); name each folder or label by its concept's id"
    ) in caplog.text


def test_sdxl_guides_from_zeros_where_no_negative_prompt_is_given():
    """negative_prompt: "" means none: diffusers' SDXL then guides from zeros
    (force_zeros_for_empty_prompt), but was given [""], the empty text's embedding, and
    rendered other images than diffusers does without a negative prompt."""
    spec = parse_spec(TINY_JOB.replace("OUT_DIR", "unused"))
    items = plan_for(spec)[:2]
    assert negative_prompts(items) == [items[0].negative_prompt] * 2  # the default's text
    empty = [replace(item, negative_prompt="") for item in items]
    assert negative_prompts(empty) is None
    sdxl = changed(spec, model="builtin:tiny-sdxl", family="sdxl", guidance_scale=5.0)
    generator = make_generator(sdxl)
    assert generator.inputs(empty)["negative_prompt"] is None
    assert generator.inputs(items)["negative_prompt"] == [items[0].negative_prompt] * 2
