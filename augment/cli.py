"""The `augment` command line: parses, calls the public API (`augment.api`), prints.

It has no logic of its own: each command is one small parser function and one handler that
calls the same function a notebook would. Every failure is one line on stderr: bad input (an
`AugmentError`, or an option argparse refuses) exits 2, a fault of the program exits 1, and
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import re
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from augment import api
from augment.errors import AugmentError
from augment.progress import quiet_libraries

#: The exit status of a command whose stdout reader went away (`augment prompts JOB | head
#: -1`): 128 + SIGPIPE, what a shell reports for a tool that signal ended, as 130 is Ctrl-C's.
EXIT_PIPE_CLOSED = 141


class StdoutClosed(Exception):
    """The reader of stdout closed the pipe: the command ends quietly, not as a fault."""


class Output(Console):
    """rich's Console on stdout, whose closed pipe raises `StdoutClosed` for `main` (rich's
    own handling exits 1, the status that says "a fault of augment")."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise StdoutClosed


out = Output()
err = Console(stderr=True)

Commands = argparse._SubParsersAction  # what add_subparsers returns


class Parser(argparse.ArgumentParser):
    """argparse, but a refused option is one line (what was wrong, where to look), exit 2."""

    def error(self, message: str) -> NoReturn:
        err.print(
            f"error: {message} (see `{self.prog} --help`)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)


class OneLineHandler(logging.Handler):
    """augment's log records as `warning: ...` lines on stderr, like the errors."""

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.levelname.lower()}: {record.getMessage()}"
        err.print(line, markup=False, highlight=False, soft_wrap=True)


def setup_logging(debug: bool) -> None:
    if debug:
        logging.basicConfig(level=logging.INFO)
        return
    logger = logging.getLogger("augment")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(h, OneLineHandler) for h in logger.handlers):
        logger.addHandler(OneLineHandler())


# Shared pieces ------------------------------------------------------------------------------


#: What Ctrl-C leaves of the commands that render into shards (others say only "interrupted").
SHARDS_KEPT = "committed shards are kept; rerun the same command to resume"


def add_job_overrides(
    parser: argparse.ArgumentParser,
    limit: str | None = "keep at most N work items (images to render)",
    seed: bool = True,
) -> None:
    """The job argument, and the overrides a command uses (`seed=False`: its output does not
    depend on the seed, so a --seed would be silently ignored)."""
    parser.add_argument("job", type=Path, help="job spec (YAML)")
    if seed:
        parser.add_argument("--seed", type=int, help="override the job seed")
    if limit is not None:
        parser.add_argument("--limit", type=int, help=limit)


def load_job(args: argparse.Namespace):
    overrides = {"seed": getattr(args, "seed", None), "limit": getattr(args, "limit", None)}
    if getattr(args, "out", None) is not None:
        overrides["output.dir"] = str(args.out)
    return api.load_spec(args.job, overrides)


def print_outputs(outputs: dict[str, Path]) -> None:
    """Where each output went: whole paths, never cut, so they can be copied."""
    for name, path in outputs.items():
        out.print(f"  {name:<11} {path}", soft_wrap=True, highlight=False)


def write_stdout(text: str) -> None:
    """Plain text on stdout (no rich rendering: JSON, a job's log), flushed; a closed pipe is
    `StdoutClosed`, as on `out`."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def print_lines(*lines: str) -> None:
    for line in lines:
        out.print(line, soft_wrap=True, highlight=False)


def folder(text: str) -> Path:
    """A folder or file to write: an empty name (an unset shell variable) is refused rather
    than taken for the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name; give a folder (is a variable unset?)")
    return Path(text)


def number_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers like 5,10, got {text!r}") from None

    return parse


def print_markdown(lines: list[str], results: Path) -> None:
    """A benchmark's markdown lines as they are, then where its results are."""
    for line in lines:
        out.print(line, soft_wrap=True, markup=False)
    out.print(f"results: {results}", soft_wrap=True)


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options set on the command line; the others keep the settings' own defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def print_results(results, folder: str, columns: list[str], metrics: list[str]) -> None:
    """Mean [95% CI] over seeds of the overall `metrics`, one table row per arm setting."""
    from augment.bench.stats import summarize

    summary = summarize(results)
    summary = summary[summary["metric"].isin(metrics) & (summary["label"] == "")]
    table = Table(*columns, "mean [95% CI]", "seeds")
    for _, row in summary.iterrows():
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        interval = f"{row['mean']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"
        table.add_row(*cells, interval, str(row["n_seeds"]))
    out.print(table)
    out.print(f"results: {Path(folder) / 'results.parquet'}", soft_wrap=True)


# run, export, plan, prompts, taxonomy ---------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_job(args)
    # No quiet_libraries() here: whatever loads a model quiets them first (in this process with
    # the local distributor, in each Ray worker otherwise), and a Ray driver that never imports
    # diffusers starts seconds sooner.
    out.print(f"[bold]{spec.name}[/]: {spec.generation.mode} with {spec.generation.model}")
    result = api.run(
        spec,
        workers=args.workers,
        distributor=args.distributor,
        address=args.address,
        retries=args.retries,
        force=args.force,
    )
    sources = sum("source" in failure for failure in result.failures)
    # "1 failed, of 2 planned" beside 2 rendered read as 3 of 2: an unreadable source image
    # is left out of the plan, so the plan's count comes first and the failures after it.
    out.print(
        f"{result.rendered} images rendered, {result.skipped} already done, of "
        f"{result.planned} planned; {result.flagged} flagged, {result.duplicates} duplicates, "
        f"{result.failed} failed"
        + (f" ({sources} unreadable source image(s))" if sources else "")
        + f", in {result.seconds:.1f} s"
    )
    print_outputs(result.outputs)
    if result.failed:
        first = result.failures[0]
        # a source file that cannot be read is the user's to fix: a rerun cannot help it
        sources = all("source" in failure for failure in result.failures)
        fix = "replace or remove those source images" if sources else "rerun to retry them"
        err.print(
            f"error: {result.failed} failed, first {first.get('item_id') or first['source']}: "
            f"{first['error']} (all in {result.outputs['manifest']}); {fix}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 2 if sources else 1
    return 0


def add_run(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="run a job end to end: plan, render, shards, exports",
        description="Run (or resume) a job: concepts -> prompts -> plan -> images -> Parquet "
        "shards -> exports. Rerunning in the same --out skips the images already written.",
        epilog="example: augment run jobs/demo.yaml --out out/demo --limit 20",
    )
    add_job_overrides(run)
    run.add_argument("--out", type=folder, help="output folder (overrides output.dir)")
    run.add_argument(
        "--force", action="store_true", help="delete a previous run in --out and start over"
    )
    run.add_argument(
        "--distributor",
        choices=("ray", "local"),
        default="ray",
        help="ray (default: local Ray, or --address) or local (this process, no Ray)",
    )
    run.add_argument("--workers", type=int, help="CPU workers (default: every CPU; GPUs: one each)")
    run.add_argument(
        "--address", help="attach to a Ray cluster (default: $RAY_ADDRESS, else local)"
    )
    run.add_argument("--retries", type=int, default=2, help="attempts per failing item")
    run.set_defaults(func=cmd_run, on_interrupt=SHARDS_KEPT)


def cmd_finetune(args: argparse.Namespace) -> int:
    quiet_libraries()  # before the spec: it may build a builtin model
    spec = api.load_spec(args.job, {"seed": args.seed, "finetune.steps": args.steps})
    if spec.finetune is None:
        raise AugmentError(
            f"{args.job}: no finetune: section; add one (method, source, steps), see "
            "jobs/tiny/finetune-lora.yaml"
        )
    f = spec.finetune
    out.print(f"[bold]{spec.name}[/]: {f.method} on {spec.generation.model}, {f.steps} steps")
    result = api.finetune(spec, force=args.force)
    card = result.card
    state = "trained" if result.trained else "already trained, reused"
    render = f"augment run {args.job}"
    if args.seed is not None and args.seed != api.load_spec(args.job).seed:
        render += f" --seed {args.seed}"  # the adapter's hash holds the seed it trained with
    if args.steps is not None and api.load_spec(args.job).finetune.steps != result.steps:
        render = f"set finetune.steps: {result.steps} in {args.job}, then {render}"
    print_lines(
        f"{result.method} ({result.family}) {state}: {result.steps} steps, final loss "
        f"{card['final_loss']:.4f}",
        *(f"  {cid}: {token}" for cid, token in result.tokens.items()),
        f"  folder      {result.folder}",
        f"  card        {result.folder / 'README.md'}",
        f"  samples     {result.folder / 'samples.png'}",
        f"render with it: {render} (prompts name a concept's token as {{token}})",
    )
    return 0


def cmd_paste(args: argparse.Namespace) -> int:
    spec = load_job(args)  # --out: a run made with `augment run JOB --out OUT`
    if spec.paste is None:
        raise AugmentError(
            f"{args.job}: no paste: section; add one (backgrounds, instances, scale), see "
            "jobs/tiny/paste.yaml"
        )
    result = api.paste(spec, force=args.force)
    print_lines(
        f"pasted {result.pasted} images ({result.instances} instances), {result.skipped} "
        f"already there, {result.failed} failed, in {result.seconds:.1f} s",
        *(f"  {name:<11} {path}" for name, path in result.outputs.items()),
    )
    return 0


def add_paste(commands: Commands) -> None:
    paste = commands.add_parser(
        "paste",
        help="paste the job's segmented renders onto real backgrounds (OUT/paste)",
        description="Copy-paste: cut each render of the job's output along its mask (segment:) "
        "and paste 1..k onto each background of paste.backgrounds, keeping the background's "
        "boxes and adding a box and mask per instance. `augment run` does this last by itself.",
        epilog="example: augment paste jobs/tiny/paste.yaml",
    )
    paste.add_argument("job", type=Path, help="job spec (YAML) with segment: and paste:")
    paste.add_argument(
        "--out", type=folder, help="the run's output folder, as `augment run --out` gave it"
    )
    paste.add_argument("--force", action="store_true", help="delete OUT/paste and start over")
    paste.set_defaults(func=cmd_paste, on_interrupt=SHARDS_KEPT)


def add_finetune(commands: Commands) -> None:
    finetune = commands.add_parser(
        "finetune",
        help="teach the model the job's concepts from real images (LoRA, textual inversion, "
        "DreamBooth)",
        description="Train the job's finetune: section from its real images: a LoRA, one token "
        "per concept, or a whole UNet. Ctrl-C keeps a checkpoint; rerunning resumes from it. "
        "`augment run` trains it first when it is missing.",
        epilog="example: augment finetune jobs/tiny/finetune-lora.yaml",
    )
    finetune.add_argument("job", type=Path, help="job spec (YAML) with a finetune: section")
    finetune.add_argument("--steps", type=int, help="override finetune.steps")
    finetune.add_argument("--seed", type=int, help="override the job seed")
    finetune.add_argument(
        "--force", action="store_true", help="delete the adapter and its checkpoints, start over"
    )
    finetune.set_defaults(func=cmd_finetune)


def cmd_export(args: argparse.Namespace) -> int:
    print_outputs(api.export(args.out_dir, args.format, include_flagged=args.include_flagged))
    return 0


def add_export(commands: Commands) -> None:
    export = commands.add_parser(
        "export",
        help="write COCO / YOLO / ImageFolder exports from a run's shards",
        description="Derive exports from OUT/shards (flagged images left out unless asked).",
        epilog="example: augment export out/demo --format coco --format yolo",
    )
    export.add_argument("out_dir", type=Path, help="an `augment run` output folder")
    export.add_argument(
        "--format",
        action="append",
        required=True,
        choices=("coco", "yolo", "yolo-seg", "imagefolder"),
        help="repeat for several",
    )
    export.add_argument("--include-flagged", action="store_true", help="keep flagged images")
    export.set_defaults(func=cmd_export)


def cmd_filter(args: argparse.Namespace) -> int:
    result = api.refilter(
        args.out_dir,
        scorer=args.scorer,
        min_concept_score=args.min_concept_score,
        min_clip_score=args.min_clip_score,
        real=args.real,
    )
    changes = [
        f"  {flag:<11} {result.before[flag]} -> {result.after[flag]}"
        for flag in result.after
        if result.before[flag] or result.after[flag]
    ]
    how = "scored again" if result.rescored else "stored scores"
    print_lines(
        f"{result.records} images re-flagged ({how}), {result.rewritten} shards rewritten",
        *changes,
    )
    print_outputs(result.outputs)
    return 0


def add_filter(commands: Commands) -> None:
    command = commands.add_parser(
        "filter",
        help="flag a finished run again (other minimums, another scorer, duplicates), "
        "without rendering",
        description="Re-score and re-flag OUT's images: other minimums use the stored scores, "
        "another --scorer scores the images again; duplicates are found again (also of a "
        "real pool with --real). Shards are rewritten atomically, the manifest keeps the "
        "history of filters, and the exports are written again. The run's own settings "
        "give back its original shards.",
        epilog="example: augment filter out/demo --min-concept-score 0.9",
    )
    command.add_argument("out_dir", type=Path, help="a finished `augment run` output folder")
    command.add_argument("--scorer", help="another scorer (classifier or CLIP folder, builtin:)")
    command.add_argument("--min-concept-score", type=float, help="flag under this (0..1)")
    command.add_argument("--min-clip-score", type=float, help="CLIP scorers: flag under this")
    command.add_argument(
        "--real",
        help="also flag images that repeat one of this real pool's (as bench classify --real)",
    )
    command.set_defaults(func=cmd_filter)


def cmd_view(args: argparse.Namespace) -> int:
    index = api.view(args.out_dir, per_concept=args.per_concept)
    print_lines(f"gallery: {index} (open it in a browser; no server needed)")
    return 0


def add_view(commands: Commands) -> None:
    command = commands.add_parser(
        "view",
        help="write a static HTML gallery of a run (OUT/gallery/index.html)",
        description="One page per concept with thumbnails (a click shows the prompt, seed and "
        "scores; checkboxes show or hide images by flag), and the per-concept quality table, "
        "worst first, as the index page.",
        epilog="example: augment view out/demo",
    )
    command.add_argument("out_dir", type=Path, help="an `augment run` output folder")
    command.add_argument(
        "--per-concept", type=int, default=500, help="at most this many images a page (500)"
    )
    command.set_defaults(func=cmd_view)


def visible(text: object) -> str:
    """Text from a file someone else wrote, with its control characters shown as escapes: a
    PNG chunk holding ESC sequences retitled the terminal and cleared the screen."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in str(text))


def cmd_inspect(args: argparse.Namespace) -> int:
    for path in args.files:
        found = api.inspect(path)
        out.print(f"[bold]{escape(visible(found['file']))}[/]", soft_wrap=True)
        out.print(f"  invisible watermark: {'found' if found['watermark'] else 'not found'}")
        if found["unread_augment"]:
            out.print(
                "  its `augment` text chunk holds no provenance augment can read: another "
                "tool's, or damaged"
            )
        if found["augment"] is None and found["parameters"] is None:
            if not found["unread_augment"]:
                out.print("  no provenance: not an augment image, or its text chunks were stripped")
            continue
        out.print(f"  synthetic: {'yes' if found['synthetic'] else 'not stated'}")
        for key, value in sorted((found["augment"] or {}).items()):
            if key != "synthetic":
                out.print(f"  {visible(key)}: {visible(value)}", soft_wrap=True, markup=False)
        if found["parameters"]:
            out.print("  parameters:", soft_wrap=True)
            for line in found["parameters"].splitlines():
                out.print(f"    {visible(line)}", soft_wrap=True, markup=False)
    return 0


def add_inspect(commands: Commands) -> None:
    command = commands.add_parser(
        "inspect",
        help="print what a PNG says of itself: synthetic, from which model, job and settings",
        description="Read the provenance text chunks every augment PNG carries: `augment` "
        "(item id, job, settings hash, model, model hash, licence, version, synthetic) and "
        "`parameters` (the Stable Diffusion web UI's prompt and settings line).",
        epilog="example: augment inspect out/demo/coco/images/*.png",
    )
    command.add_argument("files", nargs="+", type=Path, help="PNG files")
    command.set_defaults(func=cmd_inspect)


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    spec = load_job(args)
    quiet_libraries()
    out.print(f"[bold]{spec.name}[/]: starting the service ({spec.generation.model})")
    chosen = given(
        args, "host", "port", "replicas", "max_images", "batch_wait_s", "address", "max_size"
    )
    if args.write is not None:
        chosen["write"] = str(args.write)
    if args.overridable is not None:
        chosen["overridable"] = tuple(args.overridable)
    try:
        service = api.serve(spec, **chosen)
    except KeyboardInterrupt:
        err.print("interrupted before the service was up; nothing is left running")
        return 130
    if threading.current_thread() is threading.main_thread():
        # ray.init put its own SIGTERM handler in place, which exits at once: Serve's actors
        # and Ray's agents outlived the command. Stopped as Ctrl-C stops it instead.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    print_lines(
        f"serving {service.url} ({service.replicas} {service.device} replica(s)); Ctrl-C stops",
        f"  curl {service.url}/concepts",
        f"  curl -X POST {service.url}/generate -H 'Content-Type: application/json' "
        """-d '{"concept": "...", "n": 4}'""",
        *([f"writing every served image to {service.writes_to}"] if service.writes_to else []),
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        service.stop()
    outdated = service.outdated_outputs()
    if outdated:
        named = ", ".join(outdated)
        print_lines(
            f"{service.writes_to} holds {named} written before the images served; `augment "
            f"filter {service.writes_to}` checks those images for duplicates and writes {named} "
            "again"
        )
    return 0


def add_serve(commands: Commands) -> None:
    command = commands.add_parser(
        "serve",
        help="serve a job's images on request over HTTP (Ray Serve)",
        description="Start a Ray Serve application over the job's generator: POST /generate "
        "{concept, n, prompt?, start?, seed?, overrides?} answers PNGs (base64) and their "
        "records, the same bytes a batch run makes for the same items; GET /concepts, /health, "
        "/spec. Callers' requests are rendered together, in the job's batch size.",
        epilog="example: augment serve jobs/demo.yaml --port 8000 --write out/served",
    )
    add_job_overrides(command, limit=None)  # a request says how many images
    command.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    command.add_argument("--port", type=int, help="port (default 8000)")
    command.add_argument(
        "--replicas", type=int, help="replicas (default: one per GPU, else one CPU replica)"
    )
    command.add_argument(
        "--max-images", dest="max_images", type=int, help="most images a request may ask (64)"
    )
    command.add_argument(
        "--max-size",
        dest="max_size",
        type=int,
        metavar="PX",
        help="largest height or width a request may override to (default: the larger of twice "
        "the job's size and 1024)",
    )
    command.add_argument(
        "--batch-wait",
        dest="batch_wait_s",
        type=float,
        help="seconds a batch waits for other callers' items (default 0.05)",
    )
    command.add_argument(
        "--write", type=folder, help="also commit every served image to this output folder"
    )
    command.add_argument(
        "--overridable",
        nargs="*",
        metavar="SETTING",
        help="generation settings a request may override (default: num_inference_steps "
        "guidance_scale height width; none: no overrides)",
    )
    command.add_argument(
        "--address", help="attach to a Ray cluster (default: $RAY_ADDRESS, else local)"
    )
    command.set_defaults(func=cmd_serve)


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_job(args)
    items = api.plan(spec, args.output)
    counts = Counter(zip(items["concept_id"], items["concept_name"], strict=True))
    names = Counter(name for _, name in counts)  # two concepts of one name: their ids tell
    table = Table("concept", "items")
    for (concept_id, name), count in counts.items():
        shown = name if names[name] == 1 else f"{name} ({concept_id})"
        table.add_row(escape(shown), str(count))
    out.print(table)
    out.print(f"{len(items)} work items for {len(counts)} concepts")
    if args.output is not None:
        out.print(f"plan written to {args.output}")
    return 0


def add_plan(commands: Commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="expand a job into work items and show counts per concept",
        description="Expand the job's concepts and prompts into deterministic work items.",
        epilog="example: augment plan jobs/demo.yaml -o plan.parquet",
    )
    add_job_overrides(plan)
    plan.add_argument("-o", "--output", type=folder, help="write the plan as Parquet here")
    plan.set_defaults(func=cmd_plan)


def cmd_prompts(args: argparse.Namespace) -> int:
    spec = load_job(args)
    shown = api.prompts(spec, limit=args.limit)
    table = Table("concept", "variant", "prompt")
    for prompt in shown:  # "[blurry]" is prompt syntax, not rich markup
        table.add_row(escape(prompt.concept.name), str(prompt.variant), escape(prompt.text))
    out.print(table)
    out.print(f"negative prompt: {spec.prompts.negative_prompt!r}", markup=False)
    per_concept = spec.prompts.images_per_concept
    if args.limit is None:
        out.print(f"{len(shown)} prompts ({per_concept} per concept)")
    else:  # the whole job's are not built for a preview
        out.print(f"the first {len(shown)} prompts shown ({per_concept} per concept in the job)")
    return 0


def add_prompts(commands: Commands) -> None:
    prompts = commands.add_parser(
        "prompts",
        help="preview a job's prompts",
        description="Fill the job's templates for each concept and show the prompts, checked "
        "against the model's text encoder length when the model is available.",
        epilog="example: augment prompts jobs/wordnet-definitions.yaml --limit 10",
    )
    add_job_overrides(prompts, limit="show at most N prompts", seed=False)  # seed-free prompts
    prompts.set_defaults(func=cmd_prompts)


def cmd_taxonomy_show(args: argparse.Namespace) -> int:
    import json

    from rich.tree import Tree

    concepts = api.concepts(
        source=args.source,
        depth=args.depth,
        leaves=args.leaves,
        exclude=tuple(args.exclude),
        max_concepts=args.max,
        instances=args.instances,
    )
    if args.json:
        write_stdout(json.dumps([c.to_dict() for c in concepts], indent=1) + "\n")
        return 0
    root = Tree(f"[bold]{escape(args.source)}[/]")
    nodes: dict[str, Tree] = {}
    for concept in concepts:
        parent_key = concept.hypernyms[-1] if concept.hypernyms else concept.supercategory
        if parent_key not in nodes:  # a list file without supercategories: under the root
            grouped = concept.hypernyms or not parent_key
            nodes[parent_key] = root if grouped else root.add(escape(parent_key))
        where = escape(f"({concept.synset or concept.id}, id {concept.category_id})")
        label = f"{escape(concept.name)} [dim]{where}"
        nodes[concept.synset or concept.id] = nodes[parent_key].add(label)
    out.print(root)
    out.print(f"{len(concepts)} concepts")
    return 0


def add_taxonomy(commands: Commands) -> None:
    taxonomy = commands.add_parser(
        "taxonomy", help="inspect concept sources", description="Inspect concept sources."
    )
    taxonomy_commands = taxonomy.add_subparsers(dest="taxonomy_command", required=True)
    show = taxonomy_commands.add_parser(
        "show",
        help="expand a source into concepts and print them as a tree or JSON",
        description="Expand a concept source: wordnet:<synset>, coco, coco:<supercategory>, "
        "or a list file (path or shipped name: digits, weeds).",
        epilog="example: augment taxonomy show wordnet:weed.n.01 --depth 1 --json",
    )
    show.add_argument("source", help="wordnet:<synset> | coco[:<supercategory>] | list file")
    show.add_argument("--depth", type=int, help="wordnet: levels below the root to keep (1+)")
    show.add_argument(
        "--leaves", action="store_true", help="wordnet: only synsets without hyponyms"
    )
    show.add_argument(
        "--instances",
        action="store_true",
        help="wordnet: also named individuals (instance hyponyms: Paris below city.n.01)",
    )
    show.add_argument("--exclude", action="append", default=[], help="drop a synset or concept id")
    show.add_argument("--max", type=int, help="keep the first N concepts")
    show.add_argument("--json", action="store_true", help="print a JSON array of concepts")
    show.set_defaults(func=cmd_taxonomy_show)


# cluster: submit, status, logs --------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_job(args)
    job_id = api.submit(spec, args.address, args.workers)
    print_lines(
        f"submitted {job_id} to {args.address}; outputs go to {spec.output.dir}",
        f"follow it: augment status {job_id} --address {args.address}",
        f"           augment logs {job_id} --address {args.address} --follow",
    )
    return 0


def add_submit(commands: Commands) -> None:
    submit = commands.add_parser(
        "submit",
        help="submit a job to a Ray cluster (job submission API)",
        description="Submit `augment run JOB` to a Ray cluster with this project as its "
        "working_dir. --out must be a folder every node can write (shared storage).",
        epilog="example: augment submit jobs/coco-txt2img.yaml --address http://head:8265 "
        "--out /shared/out/coco",
    )
    add_job_overrides(submit)
    submit.add_argument("--address", required=True, help="the head's dashboard, http://HEAD:8265")
    submit.add_argument("--out", type=folder, help="output folder on shared storage")
    submit.add_argument("--workers", type=int, help="CPU workers (GPU clusters: one per GPU)")
    submit.set_defaults(func=cmd_submit)


def cmd_status(args: argparse.Namespace) -> int:
    out.print(f"{args.job_id}: {api.status(args.job_id, args.address)}", soft_wrap=True)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    logs = api.logs(args.job_id, args.address, follow=args.follow)
    for chunk in logs if args.follow else [logs]:
        write_stdout(chunk)
    return 0


def add_job_query(commands: Commands, name: str, text: str) -> argparse.ArgumentParser:
    """`status` and `logs`: a submitted job's id and the cluster's address."""
    query = commands.add_parser(
        name,
        help=text,
        description=text[0].upper() + text[1:] + ".",
        epilog=f"example: augment {name} raysubmit_XXXX --address http://head:8265",
    )
    query.add_argument("job_id", help="the id `augment submit` printed")
    query.add_argument("--address", required=True, help="the head's dashboard, http://HEAD:8265")
    return query


def add_status(commands: Commands) -> None:
    add_job_query(commands, "status", "show a submitted job's status").set_defaults(func=cmd_status)


def add_logs(commands: Commands) -> None:
    logs = add_job_query(commands, "logs", "print a submitted job's logs")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(func=cmd_logs)


# bench: classify, detect ----------------------------------------------------------------------


def cmd_bench_classify(args: argparse.Namespace) -> int:
    names = ("real", "synthetic", "out", "model", "weights", "image_size")
    options = given(args, *names, "shots", "ratios", "seeds", "steps", "workers")
    results = api.classify(
        **options,
        synthetic_only=not args.no_synthetic_only,
        oracle=not args.no_oracle,
        smoke=args.smoke,
    )
    folder = options.get("out", "bench")
    columns = ["arm", "ratio", "ratio_trained", "shots"]
    print_results(results, folder, columns, metrics=["top1"])
    return 0


def add_bench_classify(bench_commands: Commands) -> None:
    from augment.classifier import MODELS

    classify = bench_commands.add_parser(
        "classify",
        help="classifier: real-only vs real + synthetic vs more real vs synthetic-only, k seeds",
        description="Train a classifier on few-shot real data alone and with synthetic images "
        "at several ratios (with as many more real images, where the pool has them; and on "
        "synthetic alone); score each on the held-out real test set.",
        epilog="example: augment bench classify --real digits --synthetic out/demo "
        "--shots 5,10 --ratios 0.5,1,2 --seeds 5 --out out/demo/bench",
    )
    classify.add_argument("--real", help="digits (default) | ImageFolder dir | COCO json")
    classify.add_argument("--synthetic", type=Path, help="an `augment run` output folder")
    classify.add_argument("--out", type=folder, help="results folder (default: bench)")
    classify.add_argument("--model", choices=MODELS)
    classify.add_argument("--weights", help="local state_dict for resnet18/50 (no downloads)")
    classify.add_argument("--image-size", type=int, help="train and test at this size")
    classify.add_argument("--shots", type=number_list(int), help="real per class, e.g. 5,10,20")
    classify.add_argument(
        "--ratios",
        type=number_list(float),
        help="synthetic images per real image, e.g. 0.5,1,2",
    )
    classify.add_argument("--no-synthetic-only", action="store_true", help="skip that arm")
    classify.add_argument(
        "--no-oracle",
        action="store_true",
        help="skip the oracle arm (as many more real pool images as synthetic ones)",
    )
    classify.add_argument("--seeds", type=int, help="seeds per arm")
    classify.add_argument("--steps", type=int, help="optimisation steps per model")
    classify.add_argument("--workers", type=int, help="models trained at once (default: cores)")
    classify.add_argument("--smoke", action="store_true", help="tiny settings: under a minute")
    classify.set_defaults(func=cmd_bench_classify)


def cmd_bench_detect(args: argparse.Namespace) -> int:
    names = ("real", "synthetic", "out", "task", "model", "imgsz", "epochs", "seeds", "batch")
    names += ("evaluate_on",)
    training = ("fliplr", "mosaic", "optimizer", "lr0", "nbs", "warmup_epochs", "workers")
    options = given(args, *names, *training)
    results = api.detect(**options, smoke=args.smoke)
    folder = options.get("out", "bench")
    metrics = ["map50", "map50_95", "mask_map50", "mask_map50_95"]
    print_results(results, folder, ["arm", "metric"], metrics=metrics)
    if len(results):
        first = results.iloc[0]
        out.print(f"scored on the real {first['evaluated_on']} split ({first['n_test']} images)")
    from augment.bench.stats import paired_gain

    for metric in ("map50_95", "mask_map50_95"):
        gains = paired_gain(results, metric)
        for _, gain in gains[gains["label"] == ""].iterrows():
            interval = (
                "(one seed: no interval)"
                if math.isnan(gain["ci_low"])
                else f"[{gain['ci_low']:+.1f}, {gain['ci_high']:+.1f}]"
            )
            out.print(
                f"gain in {metric} (augmented - real-only, paired by seed): "
                f"{gain['gain']:+.1f} {interval}"
            )
    return 0


def add_bench_detect(bench_commands: Commands) -> None:
    detect = bench_commands.add_parser(
        "detect",
        help="detector: YOLO on real-only vs real + synthetic, COCOeval mAP, k seeds",
        description="Train ultralytics YOLO (yolov8n.yaml from scratch, offline) on real data "
        "alone and with boxed synthetic images; score on the real test split (val/ where "
        "there is none) with COCOeval.",
        epilog="example: augment bench detect --real out/demo/real-canvases --synthetic "
        "out/demo/paste --epochs 10 --seeds 3 --out out/demo/bench",
    )
    detect.add_argument(
        "--real", required=True, help="COCO folder (train/ + val/, and test/) or json"
    )
    detect.add_argument("--synthetic", type=Path, help="an augment output with boxes")
    detect.add_argument("--out", type=folder, help="results folder (default: bench)")
    detect.add_argument(
        "--task",
        choices=("detect", "segment"),
        help="segment: a -seg model (masks from both sets), box and mask mAP (default: detect)",
    )
    detect.add_argument(
        "--model", help="a model yaml or a local .pt (default: yolov8n.yaml, -seg for segment)"
    )
    detect.add_argument("--imgsz", type=int)
    detect.add_argument("--epochs", type=int, help="of the augmented arm (real-only: same steps)")
    detect.add_argument("--seeds", type=int)
    detect.add_argument("--batch", type=int)
    detect.add_argument(
        "--evaluate-on",
        choices=("auto", "test", "validation"),
        help="the real split scored: validation to tune settings, then test once (default: "
        "auto, test/ where the folder has one, else val/)",
    )
    training = detect.add_argument_group(
        "ultralytics training settings (its names and defaults; the digits demo uses "
        "--fliplr 0 --mosaic 0 --optimizer SGD --nbs 16 --warmup-epochs 1)"
    )
    training.add_argument("--fliplr", type=float, help="mirror probability (0 for text, digits)")
    training.add_argument("--mosaic", type=float, help="mosaic probability")
    training.add_argument("--optimizer", help="auto, SGD, AdamW, ...")
    training.add_argument("--lr0", type=float, help="initial learning rate (not with auto)")
    training.add_argument("--nbs", type=int, help="nominal batch: gradients accumulate to it")
    training.add_argument("--warmup-epochs", type=float)
    detect.add_argument("--workers", type=int, help="models trained at once")
    detect.add_argument("--smoke", action="store_true", help="1 epoch, 3 seeds")
    detect.set_defaults(func=cmd_bench_detect)


def cmd_bench_perf(args: argparse.Namespace) -> int:
    options = given(args, "out", "models", "model", "images", "fast", "peak_tflops")
    quiet_libraries()
    report = api.bench_perf(
        **options, ray=not args.no_ray, baselines=not args.no_baselines, smoke=args.smoke
    )
    peak = report["peak_tflops"]
    out.print(f"{report['device']}, torch {report['torch']}, peak {peak or '?'} TFLOP/s")
    rows = [
        (case["model"], name, row) for case in report["cases"] for name, row in case["rows"].items()
    ]
    graphed = any("vs_floor_cuda_graphs" in row for _, _, row in rows)  # a GPU's second floor
    floors = ["x floor", "x graphed floor"] if graphed else ["x floor"]
    table = Table("model", "path", "images/s", "x batched loop", *floors, "MFU", "max diff")
    for model, name, row in rows:
        if "images_per_s" not in row:
            if "error" in row:
                table.add_row(model, name, f"[red]{row['error'][:60]}[/]")
            continue
        floor_ratios = [ratio(row.get("vs_floor"))]
        if graphed:
            floor_ratios.append(ratio(row.get("vs_floor_cuda_graphs")))
        table.add_row(
            model,
            name,
            f"{row['images_per_s']:.2f}",
            ratio(row.get("vs_diffusers_batched")),
            *floor_ratios,
            f"{row['mfu']:.1%}" if "mfu" in row else "",
            str(row.get("max_pixel_difference", "")),
        )
    out.print(table)
    out.print(f"results: {Path(options.get('out', 'perf')) / 'perf.json'}", soft_wrap=True)
    return 0


def ratio(value: float | None) -> str:
    return "" if value is None else f"x{value:.2f}"


def add_bench_perf(bench_commands: Commands) -> None:
    perf = bench_commands.add_parser(
        "perf",
        help="generation speed: seed loop, batched diffusers, augment's engine, the floor",
        description="In one process: the seed article's one-prompt loop, a bare batched "
        "diffusers loop, augment's engine (default and each fast path; through Ray on a CPU) "
        "and the UNet + VAE alone, with FLOPs per image and model-FLOPs utilisation. On a GPU "
        "the SD 1.5 and SDXL architectures are built with random weights (or --model); on a "
        "CPU the digits model.",
        epilog="example: augment bench perf --out out/perf   (GPU: --models sd15,sdxl)",
    )
    perf.add_argument("--out", type=folder, help="results folder (default: perf)")
    perf.add_argument("--models", help="sd15, sdxl, digits, tiny (default: by device)")
    perf.add_argument("--model", help="a real diffusers folder instead of random weights")
    perf.add_argument("--images", type=int, help="images per timed row (default: 8 batches)")
    perf.add_argument(
        "--fast",
        help="engine variants to measure, comma-separated: no overlap, no cuda graphs, "
        "channels_last, fuse_qkv, attention flash, attention cudnn, fastest, compiled cuda "
        "graphs, float16 vae, compiled cuda graphs + float16 vae, auto batch; none (default: "
        "all on a GPU, none on a CPU)",
    )
    perf.add_argument(
        "--no-baselines",
        action="store_true",
        help="FLOPs and the engine's rows only: no seed loop, diffusers loops, UNet or floor",
    )
    perf.add_argument("--no-ray", action="store_true", help="CPU: skip the Ray 1 vs 2 workers rows")
    perf.add_argument("--peak-tflops", type=float, help="the device's dense peak, if not known")
    perf.add_argument("--smoke", action="store_true", help="the tiny model: a code check")
    perf.set_defaults(func=cmd_bench_perf)


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    names = ("real", "out", "guidance", "min_concept_score", "ratios", "steps", "shots", "seeds")
    options = given(args, *names, "image_size", "images_per_concept", "workers")
    report = api.sweep(args.job, **options)
    from augment.bench.sweep import sweep_lines

    print_markdown(sweep_lines(report), Path(options.get("out", "sweep")) / "sweep.json")
    return 0


def add_bench_sweep(bench_commands: Commands) -> None:
    sweep = bench_commands.add_parser(
        "sweep",
        help="choose steps, guidance, filter minimum and ratio on validation data, not test",
        description="Score classifiers on the real set's validation split (never its test "
        "split) to choose, stage by stage: the classifier's steps (real-only), the guidance "
        "and the filter's minimum concept score (the job rendered once per guidance, then "
        "re-filtered), and the ratio of synthetic to real images. Rerunnable: renders resume.",
        epilog="example: augment bench sweep jobs/demo.yaml --real digits --out out/sweep",
    )
    sweep.add_argument("job", help="the job to render (it needs a filters.scorer)")
    sweep.add_argument("--real", help="a real set with a validation split (default: digits)")
    sweep.add_argument("--out", type=folder, help="results folder (default: sweep)")
    sweep.add_argument("--guidance", type=number_list(float), help="e.g. 1,2,3")
    sweep.add_argument(
        "--min-concept-score", type=number_list(float), help="filter minimums, e.g. 0,0.5,0.9"
    )
    sweep.add_argument("--ratios", type=number_list(float), help="synthetic per real, e.g. 1,10")
    sweep.add_argument("--steps", type=number_list(int), help="classifier steps, e.g. 300,600")
    sweep.add_argument("--shots", type=int, help="real images per class (default: 10)")
    sweep.add_argument("--seeds", type=int, help="seeds per cell (default: 3)")
    sweep.add_argument("--image-size", type=int, help="train and score at this size")
    sweep.add_argument("--images-per-concept", type=int, help="rendered (default: the job's)")
    sweep.add_argument("--workers", type=int, help="classifiers trained at once")
    sweep.set_defaults(func=cmd_bench_sweep)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    names = ("out", "concurrency", "requests", "images", "replicas", "port", "kill", "batch")
    summary = api.bench_serve(args.job, **given(args, *names))
    from augment.bench.load import load_lines

    print_markdown(load_lines(summary), Path(args.out or "load") / "load.json")
    return 0


def add_bench_serve(bench_commands: Commands) -> None:
    command = bench_commands.add_parser(
        "serve",
        help="load-test the generation service on loopback (latency, images/s, a replica kill)",
        description="Start `augment serve` on loopback, send a fixed number of requests at "
        "each concurrency (p50/p95 latency, images/s, errors), kill a replica during a last "
        "round (the clients' retries must complete), then render as many images through the "
        "batch path for comparison.",
        epilog="example: augment bench serve jobs/demo.yaml --out out/load",
    )
    command.add_argument("job", help="a txt2img job")
    command.add_argument("--out", type=folder, help="results folder (default: load)")
    command.add_argument("--concurrency", type=number_list(int), help="e.g. 1,4,16 (default)")
    command.add_argument("--requests", type=int, help="requests per concurrency (default 32)")
    command.add_argument("--images", type=int, help="images per request (default 4)")
    command.add_argument("--replicas", type=int, help="service replicas (default 2)")
    command.add_argument("--port", type=int, help="loopback port (default 8000)")
    command.add_argument(
        "--no-kill", dest="kill", action="store_false", default=None, help="no replica kill"
    )
    command.add_argument(
        "--no-batch", dest="batch", action="store_false", default=None, help="no batch path"
    )
    command.set_defaults(func=cmd_bench_serve)


def add_bench(commands: Commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the gain from synthetic data, or generation speed",
        description="Benchmarks.",
    )
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    add_bench_classify(bench_commands)
    add_bench_detect(bench_commands)
    add_bench_perf(bench_commands)
    add_bench_sweep(bench_commands)
    add_bench_serve(bench_commands)


# digits: the embedded world -------------------------------------------------------------------


def cmd_digits_canvases(args: argparse.Namespace) -> int:
    from augment.digits.canvases import real_canvases

    real_canvases(args.real, args.train, args.val, per_class=args.per_class, test_count=args.test)
    splits = ("train", "val", "test") if args.test else ("train", "val")
    out.print(
        f"real canvases: {', '.join(f'{args.real}/{s}' for s in splits)} (COCO)", soft_wrap=True
    )
    return 0


def add_digits_canvases(digits_commands: Commands) -> None:
    canvases = digits_commands.add_parser(
        "canvases",
        help="real digits on canvases with boxes (COCO), the detector's real set",
        description="Build the digits detection world's real set: real digits (pool -> train, "
        "test -> val, validation -> test) on 96 px canvases as COCO. Synthetic canvases come "
        "from a job's segment: and paste: sections (jobs/demo.yaml), written into OUT/paste "
        "by `augment run`.",
        epilog="example: augment digits canvases --real out/digits-canvases",
    )
    canvases.add_argument("--real", type=folder, required=True, help="write real canvases here")
    canvases.add_argument("--train", type=int, default=300, help="real train canvases")
    canvases.add_argument("--val", type=int, default=150, help="real val canvases")
    canvases.add_argument(
        "--test", type=int, default=150, help="real test canvases (0: no test split)"
    )
    canvases.add_argument(
        "--per-class", type=int, help="real digits a class on the train canvases (default: 30)"
    )
    canvases.set_defaults(func=cmd_digits_canvases)


def cmd_digits_train(args: argparse.Namespace) -> int:
    from augment.digits.train import DigitsTrainConfig, train_digits_model

    config = DigitsTrainConfig(
        **given(args, "steps", "seed", "threads", "device"),
        samples=not args.no_samples,
        without=tuple(args.without),
    )
    stats = train_digits_model(args.out, config)
    out.print(
        f"digits model: {args.out} ({stats['folder_mb']:.1f} MB), {stats['steps']} UNet steps "
        f"in {stats['seconds']:.0f} s; model card: {args.out / 'README.md'}",
        soft_wrap=True,
    )
    return 0


def add_digits_train(digits_commands: Commands) -> None:
    train = digits_commands.add_parser(
        "train",
        help="train the digits diffusion model (VAE + UNet + text encoder) on the CPU",
        description="Train the embedded text-conditioned latent diffusion model on the "
        "generator split of scikit-learn's digits; writes a diffusers folder with a model card.",
        epilog="example: augment digits train --out augment/digits/model --steps 3000",
    )
    train.add_argument("--out", type=folder, required=True, help="model folder (replaced)")
    train.add_argument("--steps", type=int, help="UNet training steps (default: the shipped 3000)")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--no-samples", action="store_true", help="skip samples.png")
    train.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="NAME",
        help="leave a digit class out of training (repeatable): the novel-concept base model",
    )
    train.add_argument(
        "--device", default="cpu", help="cpu (the shipped model's) or cuda; same seeds, same draws"
    )
    train.set_defaults(func=cmd_digits_train)


def cmd_digits_train_scorer(args: argparse.Namespace) -> int:
    from augment.digits.scorer import train_digits_scorer

    stats = train_digits_scorer(args.out, steps=args.steps, seed=args.seed)
    out.print(
        f"digits scorer: {args.out}, {stats['steps']} steps in {stats['seconds']:.0f} s, "
        f"{stats['pool_accuracy_percent']:.1f} % on the pool split ({stats['pool_images']} "
        "real images it never saw)",
        soft_wrap=True,
    )
    return 0


def add_digits_train_scorer(digits_commands: Commands) -> None:
    scorer = digits_commands.add_parser(
        "train-scorer",
        help="train the digits scorer (the filter's classifier) on the generator split",
        description="Train the small CNN that scores generated digits (filters.scorer: "
        "builtin:digits-scorer) on the generator split only; reports its accuracy on the pool.",
        epilog="example: augment digits train-scorer --out augment/digits/scorer",
    )
    scorer.add_argument("--out", type=folder, required=True, help="scorer folder")
    scorer.add_argument("--steps", type=int, default=1500, help="training steps")
    scorer.add_argument("--seed", type=int, default=0)
    scorer.set_defaults(func=cmd_digits_train_scorer)


def add_digits(commands: Commands) -> None:
    digits = commands.add_parser(
        "digits", help="the embedded digits world", description="The embedded digits world."
    )
    digits_commands = digits.add_subparsers(dest="digits_command", required=True)
    add_digits_canvases(digits_commands)
    add_digits_train(digits_commands)
    add_digits_train_scorer(digits_commands)


# demo, report -------------------------------------------------------------------------------


def print_personalise(summary: dict, out_dir: Path) -> None:
    held = summary["held_out"]
    table = Table(
        "arm",
        f"'{held}' test accuracy %",
        f"gain over real-only ({held})",
        "top-1 %",
        f"scorer reads '{held}'",
    )
    for arm, figure in summary["arms"].items():
        acc, top1, gain = figure["held_out_accuracy"], figure["top1"], figure.get("held_out_gain")
        rate = figure["scorer_reads_held_out"]
        table.add_row(
            arm.replace("_", " "),
            f"{acc['mean']:.1f} [{acc['low']:.1f}, {acc['high']:.1f}]",
            f"{gain['mean']:+.1f} [{gain['low']:+.1f}, {gain['high']:+.1f}]" if gain else "",
            f"{top1['mean']:.1f} [{top1['low']:.1f}, {top1['high']:.1f}]",
            f"{100 * rate:.0f} %" if rate is not None else "",
        )
    out.print(table)
    out.print(
        f"the whole experiment took {summary['wall_time_s']:.0f} s; plot: "
        f"{out_dir / 'personalise' / 'personalise.png'}; summary: {out_dir / 'summary.json'}",
        soft_wrap=True,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    summary = api.demo(
        args.out,
        quick=args.quick,
        workers=args.workers,
        model=args.model,
        personalise=args.personalise,
        seeds=args.seeds,
        first_seed=args.first_seed,
    )
    if args.personalise:
        print_personalise(summary, args.out)
        return 0
    accuracy = summary["accuracy_percent"]
    table = Table(
        "classifier arm", f"top-1 % at {summary['real_images_per_class']} real/class", "seeds"
    )
    for arm, figure in accuracy.items():
        table.add_row(
            figure.get("label", arm),
            f"{figure['mean']:.1f} [{figure['ci_low']:.1f}, {figure['ci_high']:.1f}]",
            str(figure["n_seeds"]),
        )
    out.print(table)
    gain = summary["gain"]
    if gain:
        both = gain.get("bootstrap")
        out.print(
            f"gain (augmented - real-only): {gain['mean']:+.1f} points, "
            f"95% CI [{gain['ci_low']:+.1f}, {gain['ci_high']:+.1f}] over seeds"
            + (
                f", [{both['ci_low']:+.1f}, {both['ci_high']:+.1f}] over seeds and test images"
                if both
                else ""
            )
        )
    if oracle := summary.get("oracle_gain"):
        out.print(
            f"as many more real images instead (oracle ×{oracle['ratio']:g}): "
            f"{oracle['mean']:+.1f} points, 95% CI [{oracle['ci_low']:+.1f}, "
            f"{oracle['ci_high']:+.1f}]"
        )
    if versus := summary.get("synthetic_vs_oracle"):
        out.print(
            f"synthetic against as many real (augmented ×{versus['ratio']:g} - oracle "
            f"×{versus['ratio']:g}): {versus['mean']:+.1f} points, 95% CI "
            f"[{versus['ci_low']:+.1f}, {versus['ci_high']:+.1f}]"
        )
    for name, title in (("detector", "detector box"), ("detector_mask", "detector mask")):
        for arm, figure in (summary.get(f"{name}_map50_95") or {}).items():
            out.print(
                f"{title} mAP50:95 {arm}: {figure['mean']:.1f} "
                f"[{figure['ci_low']:.1f}, {figure['ci_high']:.1f}]"
            )
        if gain := summary.get(f"{name}_gain"):
            out.print(
                f"{title} gain (augmented - real-only): {gain['mean']:+.1f} points, "
                f"95% CI [{gain['ci_low']:+.1f}, {gain['ci_high']:+.1f}], "
                f"{gain['n_pairs']} seeds"
            )
    if where := summary.get("detector_settings_chosen_on"):
        out.print(f"(the detector's training settings were chosen on {where})")
    out.print(
        f"{summary['images_generated']} images generated in "
        f"{summary['stage_seconds']['generation']:.0f} s; the whole demo took "
        f"{summary['wall_time_s']:.0f} s"
    )
    out.print(f"report: {summary['report']}", soft_wrap=True)
    out.print(f"gallery: {summary['gallery']} ({summary['duplicates']} duplicates)", soft_wrap=True)
    out.print(f"summary: {args.out / 'summary.json'}", soft_wrap=True)
    return 0


def add_demo(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole mission on the embedded digits world (make demo)",
        description="Generate digits with the shipped model over Ray, export, benchmark a "
        "classifier and a detector against real-only training, and report the gain.",
        epilog="example: augment demo --out out/demo   (add --quick for a run under a minute)",
    )
    demo.add_argument("--out", type=folder, default=Path("out/demo"), help="output folder")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes: under a minute on 2 cores (the full demo: about 10 minutes)",
    )
    demo.add_argument("--workers", type=int, help="Ray CPU workers (default: every CPU)")
    demo.add_argument("--model", help="another model than the shipped builtin:digits")
    demo.add_argument(
        "--personalise",
        action="store_true",
        help="instead: the novel-concept experiment (LoRA and textual inversion teach the "
        "9-class digits model the class it never saw, from 10 real images per seed)",
    )
    demo.add_argument(
        "--seeds",
        type=int,
        help="with --personalise: how many seeds (default 5; each adds about 90 s on 2 cores)",
    )
    demo.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="with --personalise: the first seed (fresh seeds replicate the default run)",
    )
    demo.set_defaults(func=cmd_demo, on_interrupt=SHARDS_KEPT)


def cmd_report(args: argparse.Namespace) -> int:
    path = api.report(args.results, args.out, args.real, args.synthetic, args.sweep)
    out.print(f"report: {path}", soft_wrap=True)
    return 0


def add_report(commands: Commands) -> None:
    report = commands.add_parser(
        "report",
        help="write report.md and plots from a results table",
        description="Tables and plots (mean ± 95% CI per arm, gain vs ratio, per class, per "
        "WordNet node, detection, samples) from bench results.",
        epilog="example: augment report out/demo/bench",
    )
    report.add_argument("results", type=Path, help="results.parquet or the folder holding it")
    report.add_argument("--out", type=folder, help="report folder (default: beside the results)")
    report.add_argument("--real", help="real source for sample grids (default: from settings)")
    report.add_argument("--synthetic", type=Path, help="synthetic run for sample grids")
    report.add_argument(
        "--sweep",
        type=Path,
        help="the sweep.json (or its folder) of the `augment bench sweep` that chose the settings",
    )
    report.set_defaults(func=cmd_report)


COMMANDS = (
    add_run,
    add_finetune,
    add_paste,
    add_export,
    add_filter,
    add_view,
    add_inspect,
    add_serve,
    add_submit,
    add_status,
    add_logs,
    add_plan,
    add_prompts,
    add_taxonomy,
    add_bench,
    add_digits,
    add_demo,
    add_report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="augment",
        description="Synthetic training data with Stable Diffusion, and the numbers that say "
        "whether it helps.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The (sub)command parser `args` were parsed by: the one whose --help a user needs."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return chosen_parser(action.choices[name], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            with terminate_as_interrupt():
                return run_command(argv)
        finally:  # what is still buffered (argparse's --help) meets a closed pipe here
            sys.stdout.flush()
    except (StdoutClosed, BrokenPipeError) as exc:
        if isinstance(exc, BrokenPipeError) and not stdout_closed():
            raise  # a socket or a worker's pipe: not the reader of our output
        return quiet_stdout()


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (`kill`, a service manager, a pod stopping) stops a command as Ctrl-C does:
    committed shards kept and said so, the service and a private Ray shut down, OUT's lock
    released. By default it killed the process at once: `serve --write` left its Ray
    processes running. Only in the main thread, where signals are handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(argv: list[str] | None) -> int:
    """Parse `argv` and run its command; a failure is one line on stderr and its exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if "--debug" in unknown:  # after the command, where the fault message's reader puts it
        unknown.remove("--debug")
        args.debug = True
    if unknown:  # named by the command that refused them, pointing at its own --help
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(args.debug)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:  # a stage that stopped cleanly says where it stopped
        where = str(exc) or getattr(args, "on_interrupt", "")
        err.print(f"interrupted{': ' if where else ''}{where}", markup=False, highlight=False)
        return 130
    except StdoutClosed:
        raise
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and stdout_closed():
            raise
        if args.debug:
            raise
        line, code = one_line(exc)
        line = option_named(line, chosen_parser(parser, args))
        err.print(line, markup=False, highlight=False, soft_wrap=True)
        return code


def stdout_closed() -> bool:
    """Whether stdout is a pipe its reader has closed (poll says POLLERR then), so that a
    BrokenPipeError is ours to end on quietly, not one of a socket or a worker's pipe."""
    import select

    try:
        poller = select.poll()  # not on Windows: there a broken pipe stays an error
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # a stream without a file: captured output
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


def quiet_stdout() -> int:
    """End a command whose stdout reader went away: no message (the reader has what it
    wanted), stdout pointed at /dev/null so that Python's flush at exit finds no broken pipe
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe), the status of SIGPIPE."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stream without a file descriptor
        pass
    return EXIT_PIPE_CLOSED


def option_named(line: str, parser: argparse.ArgumentParser) -> str:
    """`error: per_concept must be ...` as `error: --per-concept must be ...`: the library
    names its parameter, the command line's user typed the option."""
    match = re.match(r"error: ([a-z][a-z0-9_]*) ", line)
    if match:
        for action in parser._actions:
            if action.dest == match[1] and action.option_strings:
                option = max(action.option_strings, key=len)
                return f"error: {option} {line[match.end() :]}"
    return line


def plain_file(path: Path) -> bool:
    """Whether a file is at `path`; False where the path itself cannot be looked up (a name
    over 255 bytes: `is_file` raised there, inside the handler of the error it explains)."""
    try:
        return path.is_file()
    except OSError:
        return False


#: OS errors of the machine, not of augment nor of the input: a full disk or quota, a file
#: system mounted read-only. ("a fault of augment" they were, where no file name came with them)
MACHINE_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some",
    errno.EDQUOT: "the disk quota is used up; free some space",
    errno.EROFS: "the file system is read-only; write to another, or remount it writable",
}


def one_line(exc: Exception) -> tuple[str, int]:
    """The line a failure prints and the exit code: 2 for bad input or a machine problem (a
    full disk, a missing right), 1 for a fault of augment itself."""
    if isinstance(exc, AugmentError):
        return f"error: {exc}", 2
    machine = MACHINE_ERRORS.get(getattr(exc, "errno", None)) if isinstance(exc, OSError) else None
    if machine is not None:  # pyarrow's and some writes' carry no file name
        where = f"{exc.filename}: " if exc.filename else ""
        return f"error: {where}{machine}; what was committed is kept: rerun the same command", 2
    if isinstance(exc, OSError) and exc.filename:
        path = Path(exc.filename)  # a folder to make, where a file is: FileExistsError
        folders = [path, *path.parents] if isinstance(exc, FileExistsError) else path.parents
        blocking = next((p for p in folders if plain_file(p)), None)
        if blocking is not None:  # what the OS says then ("File exists", "Not a directory")
            where = "" if blocking == path else f"{exc.filename}: "
            return f"error: {where}{blocking} is a file, not a folder; choose another path", 2
        return f"error: {exc.filename}: {exc.strerror or exc}; check the path and its rights", 2
    text = str(exc).strip()
    first = f": {text.splitlines()[0]}" if text else ""
    return (
        f"error: {type(exc).__name__}{first}; a fault of augment, not of your input: rerun "
        "with --debug for the traceback and report it",
        1,
    )


if __name__ == "__main__":
    sys.exit(main())
