"""Console output for long work: progress bars (done/total, images/s, time left), and
third-party loading chatter kept off the terminal."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '12.3 img/s'."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"- {self.unit}/s")


@contextmanager
def image_progress(
    total: int, label: str, unit: str = "img", transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """A live bar; yields `advance(n, note=None)`, `note` a short status shown after the bar
    (a training loss). Quiet when stderr is not a terminal (a notebook with ipywidgets has
    one); `transient`: gone once done (a
    step of a command whose own summary follows)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    shown = console.is_terminal or jupyter_widgets()
    with Progress(*columns, console=console, disable=not shown, transient=transient) as progress:
        task = progress.add_task(label, total=total, note="")

        def advance(n: int, note: str | None = None) -> None:
            progress.update(task, advance=n, **({"note": note} if note is not None else {}))

        yield advance


def jupyter_widgets() -> bool:
    """In a notebook, a live bar needs ipywidgets (rich draws it in an Output widget): without
    them it stays off, as it did everywhere in Jupyter, where a benchmark ran minutes unseen."""
    if not console.is_jupyter:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def tracked(items: list, label: str, unit: str) -> Iterator:
    """`items` one by one, under a progress bar that moves as each is done: a long pass over a
    run's shards (an export, the gallery, the duplicate pass of 100,000 images took minutes
    with nothing on the screen)."""
    with image_progress(len(items), label, unit, transient=True) as advance:
        for item in items:
            yield item
            advance(1)


def quiet_libraries() -> None:
    """Keep third-party loading chatter off the user's terminal. It imports diffusers (seconds
    on a small machine): call it where a model is loaded, not on every command."""
    for name in ("diffusers", "transformers", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_transformers()
    try:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass


def quiet_transformers() -> None:
    """transformers' part of `quiet_libraries`, for code that needs a tokenizer only (a long
    prompt's warning is ours to give, in our words)."""
    try:
        import transformers.utils.logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
