"""The UNet's forward replayed as CUDA graphs: the same kernels as eager, launched at once.

Eager, the host CPU launches each of a forward's kernels in turn; where it is slow beside the
GPU, the GPU waits. A captured graph launches a whole forward in one call. It runs the very
kernels eager runs, on the same weights, so the pixels do not change (`augment bench perf`
reports the largest difference: 0); unlike `torch.compile` nothing is fused or retuned, and
capturing a shape costs three forwards, not minutes. On an H200 with 16 host cores it bought
1-2 % at Stable Diffusion 1.5's batch of 8: a small gain, but a free one.

One graph per call signature (shapes, dtypes and the other arguments), at most MAX_GRAPHS
held (a service asked for many sizes drops the least recently used); the inputs are
copied into the graph's own tensors and its output is cloned, so a caller may keep what it
gets (a scheduler that stores model outputs) past the next call. A graph records the
addresses of the weights: when they move (`pipe.to(dtype=...)` for a float32 re-render) the
old graphs are dropped and new ones captured. Weights changed in place are read as they are
at each replay; adapters must be loaded before the first call (`load_pipeline` does).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

#: Eager forwards run on a side stream before a capture (cuDNN and cuBLAS pick and allocate
#: their work buffers there, not inside the graph).
WARMUP_FORWARDS = 2
#: Graphs a UNet keeps: a batch run uses one or two (its batch, a smaller last batch); each
#: holds its own inputs and output, so a service asked for many sizes keeps the most recent.
MAX_GRAPHS = 8


class GraphedForward:
    """A UNet's forward that captures one CUDA graph per call signature and replays it."""

    def __init__(self, module):
        self.module = module
        self.eager = module.forward
        self.pool = None  # one memory pool for every graph, made at the first capture
        # signature -> (graph, inputs, output), or None: that signature runs eager; least
        # recently used first
        self.graphs: OrderedDict[tuple, tuple | None] = OrderedDict()
        self.paused = 0

    def __call__(self, *args, **kwargs):
        import torch
        from torch.utils._pytree import tree_flatten

        leaves, tree = tree_flatten((args, kwargs))
        if not self.replayable(args, kwargs, leaves):
            return self.eager(*args, **kwargs)
        key = (
            str(tree),
            tuple(
                (tuple(x.shape), x.dtype, x.stride()) if isinstance(x, torch.Tensor) else x
                for x in leaves
            ),
        )
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            while len(self.graphs) >= MAX_GRAPHS:  # its memory goes back to the pool
                self.graphs.popitem(last=False)
            try:
                self.graphs[key] = self.capture(leaves, tree)
            except Exception as exc:  # noqa: BLE001 - eager is always there to fall back on
                from augment.errors import first_line

                # e.g. out of memory, or an op that cannot be captured: not tried again for
                # this signature, so each batch does not pay a failed capture
                log.warning("cannot capture the UNet as a CUDA graph (%s); eager", first_line(exc))
                self.graphs[key] = None
        if self.graphs[key] is None:
            return self.eager(*args, **kwargs)
        graph, inputs, output = self.graphs[key]
        for static, leaf in zip(inputs, leaves, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(leaf)
        graph.replay()
        return tree_map_tensors(output, lambda t: t.clone())

    def replayable(self, args: tuple, kwargs: dict, leaves: list) -> bool:
        """Whether a graph can stand for this call: no gradients (training runs eager), every
        tensor on the UNet's device, the timestep a tensor (a number is copied from the host
        inside the forward: a graph would replay a stale copy) and the other arguments
        hashable (they pick the graph)."""
        import torch

        if self.paused or torch.is_grad_enabled():
            return False
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if not isinstance(timestep, torch.Tensor):
            return False
        device = next(self.module.parameters()).device
        return device.type == "cuda" and all(
            leaf.device == device if isinstance(leaf, torch.Tensor) else hashable(leaf)
            for leaf in leaves
        )

    def capture(self, leaves: list, tree) -> tuple:
        """A graph of one forward on copies of `leaves`: (graph, its inputs, its output)."""
        import torch
        from torch.utils._pytree import tree_unflatten

        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args, kwargs = tree_unflatten(inputs, tree)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_FORWARDS):
                self.eager(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = self.eager(*args, **kwargs)
        log.debug("captured a CUDA graph of the UNet (%d graphs)", len(self.graphs) + 1)
        return graph, inputs, output

    @contextlib.contextmanager
    def paused_for(self):
        """Eager forwards inside: for calls of passing shapes (a memory probe) whose graphs
        would only hold memory."""
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1


def hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def tree_map_tensors(tree, function):
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: function(x) if isinstance(x, torch.Tensor) else x, tree)


def graph_forward(module) -> GraphedForward | None:
    """Replay the UNet `module`'s forward as CUDA graphs from now on (on a CUDA device only;
    elsewhere nothing changes and None is returned)."""
    device = next(module.parameters()).device
    if device.type != "cuda" or graphed(module) is not None:
        return graphed(module)
    forward = GraphedForward(module)
    apply = module._apply  # what .to(), .half() and a parent's .to() call on the weights

    def apply_and_forget(*args, **kwargs):
        forward.graphs.clear()  # the weights move: old graphs would read freed memory
        return apply(*args, **kwargs)

    module.forward = forward
    module._apply = apply_and_forget
    return forward


def remove_graphs(module) -> None:
    """The module's own forward again (undoes `graph_forward`)."""
    if graphed(module) is not None:
        del module.forward
        del module._apply


def graphed(module) -> GraphedForward | None:
    """The module's GraphedForward, if `graph_forward` installed one."""
    forward = module.__dict__.get("forward")
    return forward if isinstance(forward, GraphedForward) else None


@contextlib.contextmanager
def eager_forwards(module):
    """The module's forwards eager inside (nothing to undo where no graphs are installed)."""
    forward = graphed(module)
    with forward.paused_for() if forward is not None else contextlib.nullcontext():
        yield
