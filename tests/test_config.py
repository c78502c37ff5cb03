import re
from pathlib import Path

import pytest
import yaml

from augment.config import load_spec, parse_spec
from augment.errors import SpecError
from tests.conftest import TINY_JOB


def test_tiny_job_parses_with_defaults(write_job):
    spec = load_spec(write_job())
    assert spec.generation.num_inference_steps == 3
    assert spec.generation.scheduler == "DDIM"
    assert spec.output.formats == ["parquet", "coco"]


def test_misspelt_key_names_line_and_suggests_the_valid_key():
    text = TINY_JOB.replace("num_inference_steps: 3", "num_inference_step: 3")
    with pytest.raises(SpecError) as error:
        parse_spec(text, "jobs/x.yaml")
    line = text.splitlines().index("  num_inference_step: 3") + 1
    assert str(error.value) == (
        f"jobs/x.yaml, line {line}: generation.num_inference_step: unknown key "
        "'num_inference_step'; did you mean 'num_inference_steps'?"
    )


@pytest.mark.parametrize(
    "given, meant",
    [
        ("euler_a", "EulerAncestral"),  # the web UIs' name: "Euler" was suggested
        ("DPMSolverMultistepScheduler", "DPMSolverMultistep"),  # diffusers' class name
        ("dpm++ 2m", "DPMSolverMultistep"),
        ("ddim", "DDIM"),
        ("Eulr", "Euler"),
    ],
)
def test_a_scheduler_named_as_other_tools_name_it_suggests_augments_name(given, meant):
    text = TINY_JOB.replace(
        "  num_inference_steps: 3", f"  scheduler: '{given}'\n  num_inference_steps: 3"
    )
    with pytest.raises(
        SpecError, match=rf"unknown scheduler '{re.escape(given)}'; did you mean '{meant}'\?"
    ):
        parse_spec(text, "jobs/x.yaml")


def test_negative_step_count_is_refused_with_the_bound():
    text = TINY_JOB.replace("num_inference_steps: 3", "num_inference_steps: 0")
    line = text.splitlines().index("  num_inference_steps: 0") + 1
    with pytest.raises(SpecError) as error:
        parse_spec(text, "jobs/x.yaml")
    assert str(error.value) == (
        f"jobs/x.yaml, line {line}: generation.num_inference_steps: must be >= 1, got 0"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("height: 32", "height: 30", "generation.height: must be a multiple of 8, got 30"),
        ("seed: 7", "seed: seven", "seed: input should be a valid integer"),
        ("  source: digits", "  sourse: digits", "did you mean 'source'?"),
        ("builtin:tiny-sd", "builtin:tiny-sd\n  scheduler: DPMSolver", "'DPMSolverMultistep'"),
        ('["a handwritten digit {name}"]', "[]", "prompts.templates: must not be empty"),
        ("name: tiny", "name: tiny job ü", "name: letters, digits, '_', '.' and '-' only"),
        ("height: 32", "height: 32\n  device: gpu", "generation.device: 'gpu' is not a device"),
        ("height: 32", "height: 32\n  guidance_scale: .inf", "guidance_scale: input should be a"),
        ("digit {name}", "digit {name:d}", "{name:d} is not a plain placeholder; write {name}"),
        (
            "max_concepts: 3",
            "max_concepts: 3\n  instances: some",
            "line 6: taxonomy.instances: input should be a valid boolean, unable to interpret "
            "input, got 'some'",
        ),
        (
            "output:",
            "segment: {prompt: 'a {nmae}'}\noutput:",
            "segment.prompt: unknown placeholder",
        ),
        ("output:", "segment: {min_area: 0.9, max_area: 0.1}\noutput:", "no mask could pass"),
        ("height: 32", "height: 32\n  interpolate: {frames: 5}", "only mode interpolate uses it"),
        ("height: 32", "height: 32\n  mask: {margin: 9}", "mask: only mode inpaint uses it"),
        ("height: 32", "height: 32\n  strength: 0.3", "strength: only modes img2img and inpaint"),
        ("images_per_concept: 3", "images_per_concept: 3\n  attributes: {'0': [a]}", "a name of"),
        ("images_per_concept: 3", "images_per_concept: 3\n  attributes: {name: [a]}", "field"),
        (
            "images_per_concept: 3",
            "images_per_concept: 3\n  attributes: {place: ['a field of {name}']}",
            "place: 'a field of {name}' holds a placeholder, which attribute values do not fill",
        ),
        (
            "images_per_concept: 3",
            "images_per_concept: 3\n  negative_prompt: 'a {name}, blurry'",
            "its placeholders are not filled; write it without",
        ),
        (
            "output:",
            "segment: {method: clipseg, model: m, threshold: 40}\noutput:",
            "clipseg's is a probability",
        ),
        (
            "output:",
            "segment: {method: clipseg, model: m, threshold: -0.1}\noutput:",
            "clipseg's is a probability",
        ),
        (
            "output:",
            "segment: {threshold: 300}\noutput:",
            "segment.threshold 300: the threshold method keeps pixels that differ from the "
            "background by more than this many grey levels .*: give 0 to 254",
        ),
        ("output:", "segment: {threshold: -1}\noutput:", "segment.threshold -1: .* give 0 to 254"),
        (
            "output:",
            "segment: {method: sam, model: m, threshold: .nan}\noutput:",
            "segment.threshold: input should be a finite number",
        ),
    ],
)
def test_invalid_values_name_the_key(old, new, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        parse_spec(TINY_JOB.replace(old, new), "job.yaml")


def test_yaml_syntax_error_gives_the_line():
    with pytest.raises(SpecError, match=r"job.yaml, line 4: not valid YAML: mapping values"):
        parse_spec("name: x\ntaxonomy:\n  source: digits\n    bad: 1\n", "job.yaml")


def test_a_key_set_twice_is_refused_with_both_lines():
    """YAML keeps the last of two, so the first would be dropped without a word."""
    text = TINY_JOB.replace(
        "  num_inference_steps: 3\n", "  num_inference_steps: 3\n  height: 64\n"
    )
    with pytest.raises(SpecError, match=r"job.yaml, line 13: 'height' is set twice \(line 12"):
        parse_spec(text, "job.yaml")


def test_cli_overrides_apply_and_are_validated(write_job, tmp_path: Path):
    spec = load_spec(write_job(), {"seed": 3, "output.dir": str(tmp_path / "b"), "limit": 2})
    assert (spec.seed, spec.output.dir, spec.limit) == (3, str(tmp_path / "b"), 2)
    with pytest.raises(SpecError, match=r"limit \(an override\): must be >= 1"):
        load_spec(write_job(), {"limit": 0})


def test_spec_hash_ignores_output_dir_but_not_render_settings(write_job):
    base = load_spec(write_job())
    moved = load_spec(write_job(), {"output.dir": "elsewhere"})
    reseeded = load_spec(write_job(), {"seed": 8})
    assert base.spec_hash() == moved.spec_hash()
    assert base.spec_hash() != reseeded.spec_hash()


def test_instances_changes_the_spec_hash_only_when_set(write_job):
    """Left at false, it is out of the hashed spec: a run, paste or fine-tune from before the
    setting existed keeps its hash (and resumes, its adapter found) instead of starting over."""
    base = load_spec(write_job())
    named = load_spec(write_job(TINY_JOB.replace("max_concepts: 3", "instances: true")))
    assert "instances" not in base.identity()["taxonomy"]
    assert "instances" not in yaml.safe_load(base.to_yaml())["taxonomy"]  # OUT/job.yaml
    assert named.identity()["taxonomy"]["instances"] is True
    unlimited = load_spec(write_job(TINY_JOB.replace("  max_concepts: 3\n", "")))
    assert named.spec_hash() != unlimited.spec_hash()


def test_every_shipped_job_is_a_valid_spec():
    jobs = sorted(Path(__file__).resolve().parents[1].glob("jobs/**/*.yaml"))
    assert len(jobs) >= 15
    for job in jobs:
        load_spec(job)


def test_misspelt_keys_inside_nested_sections_suggest_the_right_one():
    base = "name: x\ntaxonomy: {source: digits}\ngeneration:\n  model: builtin:tiny-sd\n"
    with pytest.raises(SpecError, match=r"line 6: generation.controlnet.modle: .*'model'\?"):
        parse_spec(base + "  controlnet:\n    modle: x\n", "job.yaml")
    with pytest.raises(SpecError, match=r"line 6: generation.loras\[0\].pth: .*'path'\?"):
        parse_spec(base + "  loras:\n    - pth: x\n", "job.yaml")


def test_a_relative_model_path_is_looked_up_beside_the_job_file_before_the_cwd(
    write_job, tmp_path, monkeypatch
):
    """Like a taxonomy list file: the same job run from another folder finds the same files."""
    beside_job = tmp_path / "jobs" / "models" / "sd" / "v1"
    beside_job.mkdir(parents=True)
    (tmp_path / "models" / "sd" / "v1").mkdir(parents=True)  # the same name under the cwd
    job = write_job(TINY_JOB.replace("builtin:tiny-sd", "models/sd/v1"), name="jobs/job.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_spec(job).paths.model == str(beside_job)
    beside_job.rmdir()  # found under the cwd alone: that one
    assert load_spec(job).paths.model == str(tmp_path / "models" / "sd" / "v1")
    monkeypatch.chdir(tmp_path / "jobs")  # found nowhere: named where the job's folder has it
    assert load_spec(job).paths.model == str(beside_job)


@pytest.mark.parametrize("key", ["model", "vae", "config"])
def test_an_empty_file_name_is_refused_where_it_is_written(key):
    """An empty name would resolve to the job's own folder (model) or crash (vae, config)."""
    text = TINY_JOB.replace("  batch_size: 4\n", f'  batch_size: 4\n  {key}: " "\n')
    if key == "model":
        text = text.replace("  model: builtin:tiny-sd\n", "")
    with pytest.raises(SpecError, match=rf"generation.{key}: an empty name: give a file"):
        parse_spec(text, "job.yaml")
