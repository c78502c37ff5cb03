"""Train and keep an adapter: the loop (progress, checkpoints, Ctrl-C, validation grids), the
folder it writes (weights, README.md and finetune.json card, loss.png, samples.png), and the
reuse of a complete one."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from augment.config import JobSpec
from augment.errors import AugmentError, first_line
from augment.finetuning.data import TaughtConcept, TrainImage, TrainSettings
from augment.finetuning.trainer import Trainer, check_precision
from augment.generate.pipelines import ADAPTER_CARD as CARD
from augment.generate.pipelines import read_adapter_card

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    folder: Path
    method: str
    family: str
    tokens: dict[str, str]  # concept id -> token
    steps: int
    trained: bool  # False: an adapter already complete was reused
    card: dict


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted((folder / "checkpoints").glob("step-*.pt"))
    return found[-1] if found else None


def read_checkpoint(folder: Path, meta: dict, steps: int) -> dict | None:
    """The latest checkpoint in `folder`, if it was trained on what `meta` says; an unreadable
    one, one of other images or settings, or one past `steps` is an error (nothing deleted)."""
    import torch

    path = latest_checkpoint(folder)
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        trained_on = {k: v for k, v in state["meta"].items() if k != "fixed_loss_start"}
    except Exception as exc:  # torch.load raises whatever unpickling a damaged file raises
        raise AugmentError(
            f"finetune: the checkpoint {path} cannot be read ({first_line(exc)}); move it away "
            "to start over, or retrain with `augment finetune JOB --force` (which deletes the "
            "folder)"
        ) from None
    if "base_hash" not in trained_on:  # an earlier augment's checkpoint: names the base only
        meta = {k: v for k, v in meta.items() if k != "base_hash"}
    elif trained_on["base_hash"] != meta["base_hash"]:
        raise AugmentError(
            f"finetune: the base model {meta['base']} changed since the checkpoint {path} was "
            "trained on it (its weights differ); retrain with `augment finetune JOB --force` "
            "(it is deleted then)"
        )
    if trained_on != meta:
        raise AugmentError(
            f"finetune: the checkpoint {path} was trained on other images or settings than the "
            "job names now; retrain with `augment finetune JOB --force` (it is deleted then)"
        )
    if state["step"] > steps:
        raise AugmentError(
            f"finetune: {folder} has trained {state['step']} steps, more than the {steps} asked; "
            f"set finetune.steps: {state['step']} to use it, or retrain {steps} steps with "
            "`augment finetune JOB --force`"
        )
    return state


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Write checkpoints/step-N.pt through a temp file, then drop the older ones."""
    import torch

    target = folder / "checkpoints" / f"step-{state['step']:07d}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    for older in target.parent.glob("step-*.pt"):
        if older != target:
            older.unlink(missing_ok=True)
    return target


class _StopRequest:
    """Ctrl-C during training asks for a stop at the end of the current step (a checkpoint is
    written there); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.asked = False
        self._previous = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._ask)
        return self

    def _ask(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fingerprint(concepts: list[TaughtConcept], prior: list[TrainImage]) -> dict:
    """What a checkpoint was trained on, compared before a resume."""
    return {
        "images": {c.id: [i.sha256 for i in c.images] for c in concepts},
        "tokens": {c.id: c.token for c in concepts},
        "prior": [i.sha256 for i in prior],
    }


def train_adapter(
    base: str,
    concepts: list[TaughtConcept],
    settings: TrainSettings,
    out: str | Path,
    prior: list[TrainImage] | tuple = (),
    base_name: str | None = None,
    config: str | None = None,
) -> dict:
    """Train `settings.method` on `concepts` from the model at `base` (a single-file checkpoint
    with the diffusers folder `config`); write the adapter and its card into `out` and return
    the card. A checkpoint in `out` is resumed from."""
    import torch

    from augment.config import GenerationSpec, SpecPaths
    from augment.generate.pipelines import check_model, load_pipeline, select_device
    from augment.progress import image_progress, quiet_libraries

    quiet_libraries()
    out = Path(out)
    if not concepts:
        raise AugmentError("finetune: no concept to teach; give at least one, with its images")
    bare = [c.name for c in concepts if not c.images]
    if bare:
        raise AugmentError(
            f"finetune: every concept needs at least one real image; {', '.join(bare)} has none"
        )
    check_model(base, base_name or base)
    device = select_device(settings.device)
    check_precision(settings.mixed_precision, device)
    from augment.provenance import model_content_hash

    meta = {
        "method": settings.method,
        "base": base_name or base,
        # the base's weights, not its name: a model changed in place kept its old adapter
        "base_hash": model_content_hash(base),
        **fingerprint(concepts, list(prior)),
    }
    torch.manual_seed(settings.seed)
    pipe = load_pipeline(
        # no CUDA graphs: their memory pools would sit beside training's activations
        GenerationSpec(model=base_name or base, config=config, device=device, cuda_graphs=False),
        SpecPaths(model=str(base), config=config),
        keep_scheduler=True,
    )
    trainer = Trainer(pipe, concepts, settings, prior)  # checks the tokens
    start, losses = 0, []
    state = read_checkpoint(out, meta, settings.steps)
    if state is not None:
        trainer.load_state(state)
        start, losses = state["step"], list(state["losses"])
        meta["fixed_loss_start"] = state["meta"]["fixed_loss_start"]
        log.info("finetune: resuming %s from step %d", out, start)
    else:
        meta["fixed_loss_start"] = trainer.fixed_loss()
    out.mkdir(parents=True, exist_ok=True)
    trainer.train_mode(True)
    started = time.perf_counter()
    label = f"fine-tuning ({settings.method})"
    with _StopRequest() as stop, image_progress(settings.steps, label, unit="step") as advance:
        advance(start)
        for step in range(start, settings.steps):
            losses.append(trainer.step(step))
            done = step + 1
            recent = np.mean(losses[-20:])
            advance(1, f"loss {recent:.4f}")
            saved = done % settings.checkpoint_every == 0 or done == settings.steps or stop.asked
            if saved:
                save_checkpoint(out, trainer.state(done, losses, meta))
            if settings.validation_every and done % settings.validation_every == 0:
                trainer.grid(out / "validation" / f"step-{done:07d}.png", settings.seed)
            if stop.asked:  # also when Ctrl-C came during the grid, after the step's checkpoint
                if not saved:
                    save_checkpoint(out, trainer.state(done, losses, meta))
                raise KeyboardInterrupt(f"stopped at step {done}; rerun to resume from there")
    seconds = time.perf_counter() - started
    trainer.train_mode(False)
    return _finish(out, trainer, losses, seconds, start, meta, base)


def _finish(out: Path, trainer: Trainer, losses, seconds, start, meta, base) -> dict:
    """Write weights, grid, curve and card into a temp folder, move them into `out`, then the
    card (last: its presence means the adapter is complete)."""
    import torch

    settings = trainer.settings
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=out))
    try:
        files = trainer.save_adapter(tmp)
        trainer.grid(tmp / "samples.png", settings.seed)
        plot_loss(losses, tmp / "loss.png")
        card = {
            "method": settings.method,
            "family": trainer.family,
            "base": meta["base"],
            "base_location": str(base),
            "concepts": [
                {
                    "id": c.id,
                    "name": c.name,
                    "token": c.token,
                    "prompt": c.images[0].prompt,
                    "images": [{"id": i.image_id, "sha256": i.sha256} for i in c.images],
                }
                for c in trainer.concepts
            ],
            "prior_images": len(trainer.prior),
            "files": files,
            "settings": asdict(settings),
            "learning_rate": settings.lr,
            "steps": settings.steps,
            "resumed_from": start,
            "final_loss": float(np.mean(losses[-20:])),
            "fixed_loss": {"start": meta["fixed_loss_start"], "end": trainer.fixed_loss()},
            "loss": [float(v) for v in losses],
            "seconds": round(seconds, 1),
            "steps_per_second": round((settings.steps - start) / seconds, 3) if seconds else None,
            "device": str(trainer.device),
            "threads": torch.get_num_threads(),
            "fingerprint": {k: v for k, v in meta.items() if k != "fixed_loss_start"},
        }
        (tmp / "README.md").write_text(card_text(card))
        for part in tmp.iterdir():
            _move(part, out / part.name)
        (out / f".{CARD}.tmp").write_text(json.dumps(card, indent=1))
        os.replace(out / f".{CARD}.tmp", out / CARD)  # last: the adapter is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def _move(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(source, target)


def plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(values) + 1), values, alpha=0.35, lw=0.7, label="per step")
    k = min(20, len(values))
    if k > 1:
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(values) + 1), smooth, lw=1.4, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def card_text(card: dict) -> str:
    method = {
        "lora": "DreamBooth-LoRA (UNet attention"
        + (" and text encoder" if card["settings"]["train_text_encoder"] else "")
        + f", rank {card['settings']['rank']})",
        "textual_inversion": "textual inversion (one new token per concept)",
        "dreambooth": "DreamBooth (the whole UNet"
        + (" and text encoder" if card["settings"]["train_text_encoder"] else "")
        + ")",
    }[card["method"]]
    s = card["settings"]
    resumed = f", resumed at step {card['resumed_from']}" if card["resumed_from"] else ""
    fixed = card["fixed_loss"]
    lines = [
        f"# augment fine-tune: {card['method']}",
        "",
        f"- Base model: `{card['base']}` ({card['family']})",
        f"- Method: {method}",
        f"- {card['steps']} steps, batch {s['batch_size']} x {s['gradient_accumulation_steps']} "
        f"accumulated, learning rate {card['learning_rate']:g} (warmup {s['warmup_steps']}), "
        f"{s['resolution']} px, seed {s['seed']}, mixed precision {s['mixed_precision']}",
        f"- Prior preservation: {card['prior_images']} class images (weight {s['prior_weight']:g})",
        f"- Loss on fixed draws: {fixed['start']:.4f} before, {fixed['end']:.4f} after; last 20 "
        f"steps {card['final_loss']:.4f} (`loss.png`)",
        f"- {card['seconds']:.0f} s on {card['device']} ({card['threads']} threads){resumed}",
        f"- Files: {', '.join(f'`{f}`' for f in card['files'])}; samples `samples.png` (a row "
        "per concept, its instance prompt)",
        "",
        "| concept id | name | token | real images | instance prompt |",
        "|---|---|---|---|---|",
        *(
            f"| {c['id']} | {c['name']} | `{c['token']}` | {len(c['images'])} | {c['prompt']} |"
            for c in card["concepts"]
        ),
        "",
        f"The id and SHA-256 (of the pixels trained on) of every real image are in `{CARD}`.",
        'In a job, prompts name a taught concept with `{token}`: "a photo of {token} {name}".',
    ]
    return "\n".join(lines) + "\n"


def reusable_adapter(
    spec: JobSpec, taught: list[TaughtConcept], force: bool
) -> FinetuneResult | None:
    """The job's adapter when it is complete for these steps and images; `force` deletes the
    folder (checkpoints too) instead. Real images edited since it was trained are an error."""
    folder = Path(spec.paths.finetuned)
    if force and folder.exists():
        shutil.rmtree(folder)
    card = read_adapter_card(folder)
    if card is None or card["steps"] != spec.finetune.steps:
        return None
    if card["fingerprint"]["images"] != fingerprint(taught, [])["images"]:
        raise AugmentError(
            f"finetune: the real images under {spec.paths.finetune_source} changed since the "
            f"adapter {folder} was trained; rerun `augment finetune` with --force to retrain"
        )
    base_hash = card["fingerprint"].get("base_hash")  # None: an earlier augment's card
    if base_hash is not None:
        from augment.provenance import model_content_hash

        if model_content_hash(spec.paths.model) != base_hash:
            raise AugmentError(
                f"finetune: the base model {spec.generation.model} changed since the adapter "
                f"{folder} was trained on it (its weights differ); rerun `augment finetune` "
                "with --force to retrain"
            )
    return result_of(folder, card, trained=False)


def result_of(folder: Path, card: dict, trained: bool) -> FinetuneResult:
    tokens = {c["id"]: c["token"] for c in card["concepts"]}
    return FinetuneResult(
        folder, card["method"], card["family"], tokens, card["steps"], trained, card
    )
