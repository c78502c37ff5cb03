"""Fine-tuning (LoRA, textual inversion, DreamBooth) on tiny models of both families: the loss
falls, generation loads the result and renders other pixels, Ctrl-C resumes to the same
weights, and bad input is refused in one line before anything trains."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from augment import registry
from augment.config import GenerationSpec, LoraSpec, SpecPaths, TextualInversionSpec, load_spec
from augment.finetuning import (
    LORA_FILE,
    TaughtConcept,
    TrainSettings,
    train_adapter,
    train_image,
)
from augment.generate.pipelines import load_pipeline, read_adapter_card
from augment.provenance import model_content_hash, read_png_chunks
from tests.conftest import cli, error_line

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a handwritten digit <sks-nine>"


def digit_images(count: int = 2) -> list[Image.Image]:
    from augment.digits.data import digit_splits, load_digit_images

    images, labels = load_digit_images(32)
    nines = [i for i in digit_splits()["pool"] if labels[i] == 9][:count]
    return [Image.fromarray(images[i]) for i in nines]


def nine(count: int = 2) -> TaughtConcept:
    """Real nines under a new token; its embedding starts from the word 'digit'."""
    images = tuple(
        train_image("nine", PROMPT, image, f"pool-{k}", 32)
        for k, image in enumerate(digit_images(count))
    )
    return TaughtConcept("nine", "digit", "<sks-nine>", images)


#: Learning rates that move each method in 10 steps without overshooting.
RATES = {"lora": 1e-2, "textual_inversion": 5e-2, "dreambooth": 1e-4}


def settings(method: str, **changes) -> TrainSettings:
    base = dict(
        method=method,
        steps=10,
        resolution=32,
        learning_rate=RATES[method],
        batch_size=2,
        checkpoint_every=100,
        validation_images=1,
        render={"num_inference_steps": 2, "guidance_scale": 1.0},
    )
    return TrainSettings(**{**base, **changes})


def base_model(name: str) -> str:
    return str(registry.resolve("model", f"builtin:{name}", "test"))


def render(model: str, **generation) -> np.ndarray:
    settings = GenerationSpec(model=model, num_inference_steps=2, guidance_scale=1.0, **generation)
    paths = SpecPaths(
        model=model,
        loras=tuple(lora.path for lora in settings.loras),
        textual_inversions=tuple(ti.path for ti in settings.textual_inversions),
    )
    pipe = load_pipeline(settings, paths)
    return pipe(
        PROMPT,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]


def loaded_by_generation(method: str, folder: Path, card: dict) -> dict:
    """The generation settings that use a fine-tune's output."""
    if method == "lora":
        return {"loras": [LoraSpec(path=str(folder))]}
    if method == "textual_inversion":
        path = str(folder / card["files"][0])
        return {"textual_inversions": [TextualInversionSpec(path=path, token="<sks-nine>")]}
    return {"model": str(folder)}


@pytest.mark.parametrize(
    ("method", "model", "family"),
    [
        ("lora", "tiny-sd", "sd"),
        ("lora", "tiny-sdxl", "sdxl"),
        ("dreambooth", "tiny-sd", "sd"),
        ("dreambooth", "tiny-sdxl", "sdxl"),
        # A random tiny UNet barely listens to its text: a token cannot move its loss. The
        # shipped digits model (SD family) does.
        ("textual_inversion", "digits", "sd"),
    ],
)
def test_finetune_lowers_the_loss_and_generation_loads_it(tmp_path: Path, method, model, family):
    torch.set_num_threads(1)
    folder = tmp_path / "adapter"
    card = train_adapter(base_model(model), [nine()], settings(method), folder)

    assert card["family"] == family and card["steps"] == 10 and len(card["loss"]) == 10
    assert card["fixed_loss"]["end"] < card["fixed_loss"]["start"]
    assert read_adapter_card(folder) == card
    assert [i["id"] for i in card["concepts"][0]["images"]] == ["pool-0", "pool-1"]
    assert all(len(i["sha256"]) == 64 for i in card["concepts"][0]["images"])
    for name in ("README.md", "loss.png", "samples.png", *card["files"]):
        assert (folder / name).is_file()
    base = base_model(model)
    changed = render(**{"model": base, **loaded_by_generation(method, folder, card)})
    assert np.abs(changed - render(base)).mean() > 1e-4


@pytest.mark.parametrize(
    ("model", "parts"),
    [
        ("tiny-sd", {"unet", "text_encoder"}),
        ("tiny-sdxl", {"unet", "text_encoder", "text_encoder_2"}),
    ],
)
def test_lora_with_the_text_encoder_saves_and_loads_its_layers(tmp_path: Path, model, parts):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    folder = tmp_path / "adapter"
    card = train_adapter(
        base_model(model), [nine()], settings("lora", train_text_encoder=True), folder
    )
    assert card["fixed_loss"]["end"] < card["fixed_loss"]["start"]
    weights = load_file(folder / LORA_FILE)
    assert {key.split(".")[0] for key in weights} == parts
    base = base_model(model)
    only_unet = tmp_path / "unet-only"
    train_adapter(base, [nine()], settings("lora"), only_unet)
    with_text = render(base, **loaded_by_generation("lora", folder, card))
    assert np.abs(with_text - render(base, loras=[LoraSpec(path=str(only_unet))])).mean() > 1e-5


def test_textual_inversion_on_sdxl_learns_one_vector_per_text_encoder(tmp_path: Path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    folder = tmp_path / "adapter"
    card = train_adapter(base_model("tiny-sdxl"), [nine()], settings("textual_inversion"), folder)
    vectors = load_file(folder / card["files"][0])
    assert set(vectors) == {"clip_l", "clip_g"} and vectors["clip_l"].shape[0] == 1
    base = base_model("tiny-sdxl")
    changed = render(base, **loaded_by_generation("textual_inversion", folder, card))
    assert np.abs(changed - render(base)).mean() > 1e-5


def test_ctrl_c_keeps_a_checkpoint_and_the_rerun_ends_with_the_same_weights(tmp_path: Path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    chosen = settings("lora", steps=8, checkpoint_every=2)
    train_adapter(base_model("tiny-sd"), [nine()], chosen, tmp_path / "whole")

    stopped = tmp_path / "stopped"
    first = stopped / "checkpoints" / "step-0000002.pt"

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 60
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt, match="rerun to resume"):
        train_adapter(base_model("tiny-sd"), [nine()], chosen, stopped)
    kept = sorted(p.name for p in (stopped / "checkpoints").iterdir())
    assert len(kept) == 1 and kept[0] < "step-0000008.pt", kept
    assert read_adapter_card(stopped) is None  # not finished: no card

    card = train_adapter(base_model("tiny-sd"), [nine()], chosen, stopped)
    assert 2 <= card["resumed_from"] < 8
    whole, resumed = load_file(tmp_path / "whole" / LORA_FILE), load_file(stopped / LORA_FILE)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_ctrl_c_during_a_validation_grid_still_checkpoints_that_step(tmp_path, monkeypatch):
    """The grid can take long on a real model: a Ctrl-C there must not lose the steps since
    the last periodic checkpoint."""
    from augment.finetuning.trainer import Trainer

    torch.set_num_threads(1)
    grid = Trainer.grid

    def grid_then_ctrl_c(self, path, seed):
        grid(self, path, seed)
        os.kill(os.getpid(), signal.SIGINT)  # handled between bytecodes: "during" the grid

    monkeypatch.setattr(Trainer, "grid", grid_then_ctrl_c)
    chosen = settings("lora", steps=6, checkpoint_every=100, validation_every=3)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 3"):
        train_adapter(base_model("tiny-sd"), [nine()], chosen, tmp_path / "adapter")
    kept = [p.name for p in (tmp_path / "adapter" / "checkpoints").iterdir()]
    assert kept == ["step-0000003.pt"]


def test_run_trains_first_then_renders_with_the_token(tmp_path: Path, capsys):
    job = (REPO / "jobs" / "tiny" / "finetune-lora.yaml").read_text()
    job = job.replace("out/tiny/finetune-lora", str(tmp_path / "out"))
    job = job.replace(
        "  steps: 12",
        "  steps: 4\n  prior_preservation: {prompt: 'a photo of a {name}', images: 2}",
    )
    path = tmp_path / "job.yaml"
    path.write_text(job)

    code, out, err = cli(capsys, "run", path, "--distributor", "local")
    assert code == 0, err
    spec = load_spec(path)
    card = read_adapter_card(spec.paths.finetuned)
    assert card["steps"] == 4 and card["prior_images"] == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["finetune"]["tokens"] == {"nine": "<sks-nine>"}
    weights = Path(spec.paths.finetuned) / card["files"][0]
    adapter = {"kind": "finetune", "name": f"lora:{card['files'][0]}"}
    assert manifest["model"]["adapters"] == [{**adapter, "hash": model_content_hash(weights)}]
    png = pq.read_table(tmp_path / "out" / "shards", columns=["image"]).to_pylist()[0]
    chunks = read_png_chunks(png["image"]["bytes"])
    assert json.loads(chunks["augment"])["adapters"] == manifest["model"]["adapters"]
    hash10 = model_content_hash(weights)[:10]  # and the web UI's line, as for any LoRA
    assert f'Lora hashes: "{Path(card["files"][0]).stem}: {hash10}"' in chunks["parameters"]
    rows = pq.read_table(tmp_path / "out" / "shards", columns=["concept_id", "prompt"]).to_pylist()
    prompts = {row["concept_id"]: row["prompt"] for row in rows}
    assert prompts["nine"] == "a photo of <sks-nine> nine"
    assert prompts["eight"] == "a photo of eight"  # {token} is empty for a concept not taught

    code, out, err = cli(capsys, "finetune", path)
    assert code == 0 and "already trained, reused" in out, err

    # Trained on with --steps, the adapter no longer has the job's 4 steps: both the hint and
    # the run's refusal say what to set (run --force would not retrain it)
    code, out, err = cli(capsys, "finetune", path, "--steps", "5")
    assert code == 0 and f"set finetune.steps: 5 in {path}, then augment run" in out, err
    code, out, err = cli(capsys, "run", path, "--distributor", "local")
    line = error_line(err)
    assert code == 2 and "trained 5 steps, more than the 4 asked" in line
    assert "set finetune.steps: 5 to use it" in line and "augment finetune JOB --force" in line


def finetune_job(
    tmp_path: Path, images: Path, template: str = "a photo of {token} {name}", **finetune
) -> Path:
    model = finetune.pop("model", "builtin:tiny-sd")
    settings = {
        "method": "lora",
        "source": f"{{path: {images}}}",
        "concepts": "[nine]",
        "out": tmp_path / "adapters",
        **finetune,  # a key set twice is refused: the test's own settings replace these
    }
    lines = "\n".join(f"  {key}: {value}" for key, value in settings.items())
    path = tmp_path / "job.yaml"
    path.write_text(
        f"""name: bad
taxonomy: {{source: digits}}
prompts: {{templates: ["{template}"], images_per_concept: 1}}
generation: {{model: {model}, height: 32, width: 32}}
finetune:
{lines}
output: {{dir: {tmp_path / "out"}}}
"""
    )
    return path


def image_folder(tmp_path: Path, **files: bytes | tuple[int, int]) -> Path:
    """An image folder: nine/<name>.png as digit images, `files` added (bytes or a size)."""
    folder = tmp_path / "real"
    (folder / "nine").mkdir(parents=True)
    for k, image in enumerate(digit_images(2)):
        image.save(folder / "nine" / f"{k}.png")
    for name, content in files.items():
        target = folder / name.replace("__", "/")
        target.parent.mkdir(exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            Image.new("RGB", content).save(target)
    return folder


@pytest.mark.parametrize(
    ("files", "finetune", "message"),
    [
        ({}, {"concepts": "[eight]"}, "no real image of concept 'eight'"),
        ({"nine__broken.png": b"not a png"}, {}, "broken.png cannot be read"),
        ({"nine__small.png": (16, 16)}, {}, "is 16x16, smaller than the training resolution 32"),
        ({}, {"method": "textual_inversion", "token": "'{name}'"}, "'nine' is already a word"),
        ({}, {"rank": 0}, "finetune.rank: must be >= 1, got 0"),
        (
            {},
            {"instance_prompt": "'a {tokn} {name}'"},
            "finetune.instance_prompt: unknown placeholder {tokn} in 'a {tokn} {name}'",
        ),
        ({}, {"model": "models/missing"}, "generation.model: 'models/missing' not found"),
    ],
)
def test_bad_input_exits_2_in_one_line_and_keeps_checkpoints(
    tmp_path: Path, capsys, files, finetune, message
):
    job = finetune_job(tmp_path, image_folder(tmp_path, **files), **finetune)
    checkpoint = None
    if not {"rank", "instance_prompt"} & set(finetune):  # a spec that loads
        checkpoint = Path(load_spec(job).paths.finetuned) / "checkpoints" / "step-0000002.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"a checkpoint")
    capsys.readouterr()  # what building the tiny model printed above
    code, out, err = cli(capsys, "finetune", job)
    assert code == 2 and message in error_line(err), err
    if checkpoint is not None:
        assert checkpoint.read_bytes() == b"a checkpoint"


NO_TOKEN = "'a photo of {name}'"


@pytest.mark.parametrize(
    ("template", "finetune", "message"),
    [
        # textual inversion trains only the token's vector: no gradient without it (a crash)
        (
            "a photo of {token} {name}",
            {"method": "textual_inversion", "instance_prompt": NO_TOKEN},
            "finetune.instance_prompt: must contain {token} ('a photo of {name}' has none)",
        ),
        # LoRA and DreamBooth would train, but under another caption than the renders say
        (
            "a photo of {token} {name}",
            {"instance_prompt": NO_TOKEN},
            "prompts.templates use {token}, but finetune.instance_prompt 'a photo of {name}' "
            "does not, so the lora fine-tune never learns it",
        ),
        (
            "a photo of {token} {name}",
            {"method": "dreambooth", "instance_prompt": NO_TOKEN},
            "so the dreambooth fine-tune never learns it",
        ),
        # textual inversion's vector is reached through {token} alone: no image would change
        (
            "a photo of {name}",
            {"method": "textual_inversion"},
            "no template of prompts.templates names {token}, the word textual_inversion learns",
        ),
        ("a photo of {token} {name}", {"concepts": "[]"}, "finetune.concepts: the list is empty"),
    ],
)
def test_a_token_never_learnt_or_never_rendered_is_refused_as_the_spec_loads(
    tmp_path: Path, capsys, template, finetune, message
):
    job = finetune_job(tmp_path, image_folder(tmp_path), template, **finetune)
    code, out, err = cli(capsys, "finetune", job)
    assert code == 2 and message in error_line(err), err
    assert not (tmp_path / "adapters").exists()


@pytest.mark.parametrize(
    ("template", "instance_prompt", "warned"),
    [
        ("a photo of {name}", "'a photo of {token} {name}'", True),
        ("a photo of {name}", NO_TOKEN, False),  # taught under its name, rendered by it
    ],
)
def test_a_lora_whose_token_no_template_renders_trains_and_says_so(
    tmp_path: Path, capsys, template, instance_prompt, warned
):
    """A LoRA changes the weights every prompt goes through, so it is not refused; but a
    concept taught as {token} and rendered without it is not what the user meant."""
    job = finetune_job(
        tmp_path, image_folder(tmp_path), template, instance_prompt=instance_prompt, steps=1
    )
    code, out, err = cli(capsys, "finetune", job)
    assert code == 0, err
    said = "no template of prompts.templates names {token}: the renders use the tuned weights"
    assert (said in err) == warned, err
    card = read_adapter_card(load_spec(job).paths.finetuned)
    assert card["steps"] == 1 and len(card["concepts"]) == 1


def test_a_lora_of_the_other_family_is_refused_before_training(tmp_path: Path, capsys):
    job = finetune_job(tmp_path, image_folder(tmp_path))
    job.write_text(
        job.read_text().replace(
            "height: 32", "loras: [{path: 'builtin:tiny-lora-sdxl'}], height: 32"
        )
    )
    code, out, err = cli(capsys, "finetune", job)
    line = error_line(err)
    assert code == 2 and "generation.loras[0].path" in line and "another family" in line
    assert not (tmp_path / "adapters").exists()


def test_prior_preservation_of_an_img2img_job_renders_its_class_images_from_text(tmp_path):
    """The class images are the base model's own renders of the class prompt: the job's
    source, strength and mask belong to its own mode and must not reach them (txt2img refuses
    them)."""
    from types import SimpleNamespace

    from augment.finetuning import class_image_spec
    from augment.job import concepts_for

    job = (REPO / "jobs" / "tiny" / "inpaint.yaml").read_text()
    finetune = (REPO / "jobs" / "tiny" / "finetune-lora.yaml").read_text().split("finetune:")[1]
    finetune = finetune.split("output:")[0].replace(
        "  steps: 12", "  steps: 4\n  prior_preservation: {prompt: 'a {name}', images: 2}"
    )
    path = tmp_path / "job.yaml"
    path.write_text(job.replace("output:", "finetune:" + finetune + "output:"))
    spec = load_spec(path)
    assert spec.generation.strength == 1.0 and spec.generation.mask.margin == 2
    concepts = concepts_for(spec)
    class_spec = class_image_spec(spec, [SimpleNamespace(id="nine")], concepts, tmp_path / "c")
    g = class_spec.generation
    assert (g.mode, class_spec.source, g.strength, g.mask) == (
        "txt2img",
        None,
        0.75,
        type(g.mask)(),
    )
    assert class_spec.prompts.templates == ["a {name}"]


def test_fewer_real_images_than_asked_are_said(tmp_path: Path, caplog):
    """A folder whose images sit one level deeper left a concept with 1 of its 4 shots."""
    from augment.finetuning.data import real_images
    from augment.job import concepts_for

    spec = load_spec(finetune_job(tmp_path, image_folder(tmp_path), images_per_concept=4))
    taught = real_images(spec, concepts_for(spec))
    assert [len(t.images) for t in taught] == [2]
    assert "concept nine has 2 real image(s) in" in caplog.text
    assert "of the 4 that finetune.images_per_concept asks" in caplog.text


def test_train_adapter_says_which_concept_has_no_image_or_that_there_is_none(tmp_path: Path):
    from augment.errors import AugmentError

    base = base_model("tiny-sd")
    with pytest.raises(AugmentError, match="no concept to teach"):
        train_adapter(base, [], settings("lora"), tmp_path / "a")
    empty = TaughtConcept("eight", "eight", "<sks-eight>", ())
    with pytest.raises(AugmentError, match="eight has none"):
        train_adapter(base, [nine(), empty], settings("lora"), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_two_concepts_given_one_token_are_refused():
    """Ids that differ only in case made one token, <sks-apple>, for Apple and apple: one
    learnt embedding overwrote the other, and both rendered as one concept."""
    from augment.config import load_spec
    from augment.errors import SpecError
    from augment.finetuning.data import tokens_for
    from augment.taxonomy.concept import Concept

    spec = load_spec(REPO / "jobs" / "tiny" / "finetune-textual-inversion.yaml")
    spec = spec.model_copy(update={"finetune": spec.finetune.model_copy(update={"concepts": None})})
    apples = [Concept("Apple", "Apple", 1), Concept("apple", "apple", 2)]
    with pytest.raises(SpecError, match=r"gives 'Apple' \(Apple\) and 'apple' \(apple\) one token"):
        tokens_for(spec, apples)
    distinct = [Concept("red_apple", "Apple", 1), Concept("green_apple", "apple", 2)]
    assert tokens_for(spec, distinct) == {
        "red_apple": "<sks-red_apple>",
        "green_apple": "<sks-green_apple>",
    }


def test_a_long_job_name_still_gives_an_adapter_folder_the_file_system_takes():
    from augment.config import adapter_folder, load_spec

    spec = load_spec(REPO / "jobs" / "tiny" / "finetune-lora.yaml", {"name": "j" * 260})
    folder = adapter_folder(spec, None)
    assert len(folder.name.encode()) < 255 and folder.name.startswith("j" * 100 + "-")


def test_two_projects_with_their_own_real_folder_get_their_own_adapter(tmp_path: Path):
    """Two jobs of one name, each with `source: {path: real}` in its own folder, shared one
    adapter: the second was told its images had changed, and --force deleted the first's."""
    from augment.config import load_spec

    text = (REPO / "jobs" / "tiny" / "finetune-lora.yaml").read_text()
    text = text.replace("path: builtin:digits-pool", "path: real")
    folders = []
    for project in ("p1", "p2"):
        (tmp_path / project).mkdir()
        (tmp_path / project / "job.yaml").write_text(text)
        folders.append(load_spec(tmp_path / project / "job.yaml").paths.finetuned)
    assert folders[0] != folders[1]
    assert load_spec(tmp_path / "p1" / "job.yaml").paths.finetuned == folders[0]
    shipped = [load_spec(REPO / "jobs" / "tiny" / "finetune-lora.yaml").paths.finetuned]
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(REPO / "jobs" / "tiny" / "finetune-lora.yaml", tmp_path / "elsewhere" / "j.yaml")
    shipped.append(load_spec(tmp_path / "elsewhere" / "j.yaml").paths.finetuned)
    assert shipped[0] == shipped[1]  # a builtin: source is the same wherever the job lies


def test_an_embedding_of_the_fine_tunes_own_token_is_refused_with_the_spec(tmp_path: Path):
    """It failed when the pipeline loaded, blaming finetune:, after a warning that the token
    was in no template ({token} says it); with a LoRA, the embedding replaced the learnt
    identifier without a word."""
    from augment.errors import SpecError
    from augment.job import check_inputs

    embedding = tmp_path / "nine.safetensors"
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 32)}, str(embedding))
    job = tmp_path / "job.yaml"
    text = (REPO / "jobs" / "tiny" / "finetune-lora.yaml").read_text()
    job.write_text(
        text.replace(
            "generation:\n",
            f"generation:\n  textual_inversions: [{{path: {embedding}, token: '<sks-nine>'}}]\n",
        )
    )
    spec = load_spec(job, {"finetune.out": str(tmp_path / "adapters")})  # none trained yet
    with pytest.raises(SpecError, match="is also the token finetune: teaches concept 'nine'"):
        check_inputs(spec)  # before the fine-tune trains
    assert not Path(spec.paths.finetuned).exists()


def test_a_base_model_changed_in_place_is_not_given_its_old_adapter(tmp_path: Path):
    """The adapter's hash names the base model by its path: retrained, downloaded again or
    swapped under the same name, it kept the adapter trained on the old weights (and a longer
    run resumed the old checkpoint on the new base)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file, save_file

    from augment.errors import AugmentError
    from augment.finetuning.adapter import reusable_adapter

    torch.set_num_threads(1)
    base = tmp_path / "base"
    shutil.copytree(base_model("tiny-sd"), base)
    out = tmp_path / "adapter"
    card = train_adapter(str(base), [nine()], settings("lora", steps=2, checkpoint_every=2), out)
    assert card["fingerprint"]["base_hash"]
    spec = SimpleNamespace(
        paths=SimpleNamespace(finetuned=str(out), finetune_source="real", model=str(base)),
        finetune=SimpleNamespace(steps=2),
        generation=SimpleNamespace(model=str(base)),
    )
    assert reusable_adapter(spec, [nine()], force=False) is not None  # as it was: reused
    weights = next((base / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    tensors = {k: v + 0.01 if k == sorted(tensors)[0] else v for k, v in tensors.items()}
    save_file(tensors, str(weights))
    with pytest.raises(AugmentError, match="the base model .* changed since the adapter"):
        reusable_adapter(spec, [nine()], force=False)
    with pytest.raises(AugmentError, match="changed since the checkpoint .* was trained on it"):
        train_adapter(str(base), [nine()], settings("lora", steps=4, checkpoint_every=2), out)
