"""augment: synthetic training data with Stable Diffusion, and the numbers that say whether it
helps.

    import augment as ag
    spec = ag.load_spec("jobs/demo.yaml", {"limit": 20})
    result = ag.run(spec, out="out/x", distributor="local")
    frame = ag.read(result.out_dir)

The stages (`augment.api`) load on first use, so importing one module of the package (as a Ray
worker does) does not import them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "AugmentError",
    "Client",
    "RequestError",
    "ServedImages",
    "bench_perf",
    "bench_serve",
    "classify",
    "concepts",
    "demo",
    "detect",
    "export",
    "finetune",
    "inspect",
    "load_spec",
    "logs",
    "paired_gain",
    "paste",
    "plan",
    "prompts",
    "read",
    "refilter",
    "report",
    "run",
    "serve",
    "status",
    "submit",
    "summarize",
    "sweep",
    "view",
]

if TYPE_CHECKING:
    from augment.api import (
        bench_perf,
        bench_serve,
        classify,
        concepts,
        demo,
        detect,
        export,
        finetune,
        inspect,
        load_spec,
        logs,
        paired_gain,
        paste,
        plan,
        prompts,
        read,
        refilter,
        report,
        run,
        serve,
        status,
        submit,
        summarize,
        sweep,
        view,
    )
    from augment.client import Client, ServedImages
    from augment.errors import AugmentError, RequestError

#: Classes of the front door, with the modules that hold them (the stages are in augment.api).
CLASSES = {
    "AugmentError": "augment.errors",
    "Client": "augment.client",
    "RequestError": "augment.errors",
    "ServedImages": "augment.client",
}


def __getattr__(name: str):
    if name in CLASSES:
        import importlib

        return getattr(importlib.import_module(CLASSES[name]), name)
    if name in __all__:
        from augment import api

        return getattr(api, name)
    raise AttributeError(f"module 'augment' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
