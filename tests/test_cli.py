"""The installed `augment` command: help, one-line errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_JOB, cli, error_line

AUGMENT = [str(Path(sys.executable).parent / "augment")]


def augment(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*AUGMENT, *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_only_real_subcommands():
    result = augment("--help")
    assert result.returncode == 0
    assert "run" in result.stdout and "plan" in result.stdout
    for command in ("run", "plan"):
        sub = augment(command, "--help")
        assert sub.returncode == 0 and "example: augment " + command in sub.stdout


def test_user_errors_exit_2_with_one_line(tmp_path: Path):
    cases = {
        "misspelt.yaml": (
            TINY_JOB.replace("num_inference_steps:", "num_inference_step:"),
            "did you mean 'num_inference_steps'?",
        ),
        "negative.yaml": (
            TINY_JOB.replace("num_inference_steps: 3", "num_inference_steps: -5"),
            "generation.num_inference_steps: must be >= 1, got -5",
        ),
        "nomodel.yaml": (
            TINY_JOB.replace("builtin:tiny-sd", "models/missing-sd21"),
            "'models/missing-sd21' not found",
        ),
        # Ours, in our words: the tokenizer's own warning about the same prompt stays quiet.
        "long.yaml": (
            TINY_JOB.replace("{name}", "{name}" + " on paper" * 40).replace(
                "builtin:tiny-sd",
                "builtin:digits",  # shipped: no model is built first
            ),
            "exceed the text encoder's 77 tokens",
        ),
    }
    for name, (text, expected) in cases.items():
        job = tmp_path / name
        job.write_text(text.replace("OUT_DIR", str(tmp_path / "out")))
        result = augment("run", str(job))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert expected in lines[0]
        assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path):
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("seed: 7", "sed: 7"))
    result = augment("--debug", "run", str(job))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_plan_prints_counts_and_writes_parquet(tmp_path: Path):
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    result = augment("plan", str(job), "-o", str(tmp_path / "plan.parquet"))
    assert result.returncode == 0, result.stderr
    assert "9 work items for 3 concepts" in result.stdout
    assert (tmp_path / "plan.parquet").is_file()


def test_an_output_path_under_a_file_names_that_file(write_job, tmp_path, capsys):
    job, taken = write_job(), tmp_path / "notes.txt"
    taken.write_text("mine")
    code, _, err = cli(capsys, "plan", job, "-o", taken / "plan.parquet")
    assert code == 2
    assert error_line(err) == f"error: {taken} is a file, not a folder; choose another path"
    code, _, err = cli(capsys, "plan", job, "-o", taken / "plans" / "plan.parquet")
    assert code == 2 and f"{taken} is a file, not a folder" in error_line(err)
    assert taken.read_text() == "mine"


def test_an_unknown_option_points_at_its_own_command_help(capsys):
    code, _, err = cli(capsys, "bench", "classify", "--real-pool", "x")
    assert code == 2
    assert error_line(err) == (
        "error: unrecognized arguments: --real-pool x (see `augment bench classify --help`)"
    )
    code, _, err = cli(capsys, "plan", "job.yaml", "--limt", "3")
    assert code == 2 and "(see `augment plan --help`)" in error_line(err)


def test_a_refused_option_is_named_as_it_was_typed(tmp_path: Path):
    """The library names its parameter (`per_concept`); the command line's user typed
    `--per-concept`."""
    result = augment("view", str(tmp_path), "--per-concept", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --per-concept must be at least 1, got 0"
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    result = augment("run", str(job), "--workers", "0")
    assert result.stderr.startswith("error: --workers must be at least 1, got 0")


def test_python_dash_m_augment_is_the_command_line():
    import json

    result = subprocess.run(
        [sys.executable, "-m", "augment", "taxonomy", "show", "digits", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [c["name"] for c in json.loads(result.stdout)][:3] == ["zero", "one", "two"]


def test_a_closed_stdout_pipe_ends_the_command_quietly_as_sigpipe_would(tmp_path: Path):
    """`augment prompts JOB | head -1`: the reader has what it wanted. Exit 1 with nothing said
    read as a fault of augment; a tool ended by SIGPIPE exits 141 (as Ctrl-C's 130), silently."""
    job = tmp_path / "job.yaml"
    job.write_text(TINY_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    for args in (
        ["taxonomy", "show", "digits"],  # a rich tree
        ["taxonomy", "show", "digits", "--json"],  # plain text
        ["prompts", str(job)],  # a rich table
        ["--help"],  # argparse's own (it ignores a failed write itself: then it exits 0)
    ):
        read, write = os.pipe()
        os.close(read)  # before the command starts: its first write meets no reader
        try:
            result = subprocess.run([*AUGMENT, *args], stdout=write, stderr=subprocess.PIPE)
        finally:
            os.close(write)
        assert result.stderr == b"", (args, result.stderr)  # no traceback, no "Exception ignored"
        assert result.returncode in ((0, 141) if args == ["--help"] else (141,)), args
