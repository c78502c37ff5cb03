"""CUDA graphs of the UNet: the same outputs as eager, and nothing changes off a GPU.

The graph tests need a CUDA device: they are skipped on a CPU and run on the GPU machine
(`pytest tests/test_cuda_graphs.py` there, before `augment bench perf`)."""

from __future__ import annotations

import pytest
import torch

from augment.generate.cuda_graphs import (
    MAX_GRAPHS,
    GraphedForward,
    eager_forwards,
    graph_forward,
    graphed,
    remove_graphs,
)
from augment.generate.tiny import build_sdxl_unet, build_unet
from tests.conftest import TINY_JOB, cli, images_by_item

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def unet_inputs(unet, batch: int, timestep: int) -> dict:
    generator = torch.Generator().manual_seed(batch * 1000 + timestep)
    size = unet.config.sample_size
    inputs = {
        "sample": torch.randn(batch, 4, size, size, generator=generator),
        "timestep": torch.tensor(timestep),
        "encoder_hidden_states": torch.randn(
            batch, 7, unet.config.cross_attention_dim, generator=generator
        ),
    }
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * (
            unet.config.addition_time_embed_dim
        )
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=generator),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch).float(),
        }
    device, dtype = unet.device, unet.dtype
    return torch.utils._pytree.tree_map(
        lambda t: t.to(device, dtype if t.is_floating_point() else t.dtype), inputs
    )


def test_off_a_gpu_the_unet_is_left_as_it_is():
    unet = build_unet()
    assert graph_forward(unet) is None
    assert graphed(unet) is None and not {"forward", "_apply"} & unet.__dict__.keys()
    with eager_forwards(unet), torch.no_grad():  # nothing to pause: still runs
        assert unet(**unet_inputs(unet, 2, 10)).sample.shape == (2, 4, 16, 16)


def test_at_most_max_graphs_are_kept_the_least_recently_used_dropped(monkeypatch):
    """A service asked for many sizes holds MAX_GRAPHS graphs, not one per size for ever."""
    forward = GraphedForward(build_unet())
    captured = []

    class Graph:
        def replay(self):
            pass

    def capture(leaves, tree):
        captured.append(leaves[0].shape[0])
        return Graph(), [None] * len(leaves), torch.zeros(1)

    monkeypatch.setattr(forward, "capture", capture)
    monkeypatch.setattr(forward, "replayable", lambda *_: True)
    with torch.no_grad():
        for batch in [*range(1, MAX_GRAPHS + 1), 1, MAX_GRAPHS + 1, 2, 1]:
            forward(torch.zeros(batch, 4), torch.tensor(1))
    # batch 1, used again, outlives batch 2, which is captured again after its eviction
    assert captured == [*range(1, MAX_GRAPHS + 1), MAX_GRAPHS + 1, 2]
    assert len(forward.graphs) == MAX_GRAPHS


@gpu
@pytest.mark.parametrize("build", [build_unet, build_sdxl_unet])
def test_graphs_replay_the_eager_outputs_bit_for_bit(build):
    unet = build().to("cuda", torch.float16).eval()
    calls = [(batch, t) for batch in (2, 4) for t in (999, 500, 1)] + [(2, 250)]
    with torch.no_grad():
        eager = [unet(**unet_inputs(unet, b, t), return_dict=False)[0] for b, t in calls]
        forward = graph_forward(unet)
        replayed = [unet(**unet_inputs(unet, b, t), return_dict=False)[0] for b, t in calls]
    assert len(forward.graphs) == 2, "one graph per batch shape, whatever the timestep"
    # compared after every call: a later replay must not overwrite an output a caller kept
    for (batch, t), a, b in zip(calls, eager, replayed, strict=True):
        assert torch.equal(a, b), (batch, t, (a - b).abs().max().item())


@gpu
def test_graphs_follow_the_weights_through_a_float32_round_trip():
    unet = build_unet().to("cuda", torch.float16).eval()
    graph_forward(unet)
    with torch.no_grad():
        before = unet(**unet_inputs(unet, 2, 10)).sample
        unet.to(torch.float32)
        wide = unet(**unet_inputs(unet, 2, 10)).sample
        with eager_forwards(unet):
            eager_wide = unet(**unet_inputs(unet, 2, 10)).sample
        unet.to(torch.float16)
        after = unet(**unet_inputs(unet, 2, 10)).sample
    assert torch.equal(wide, eager_wide)
    assert torch.equal(before, after)
    remove_graphs(unet)
    assert graphed(unet) is None and not {"forward", "_apply"} & unet.__dict__.keys()


@gpu
def test_a_signature_that_cannot_be_captured_runs_eager_without_trying_again(monkeypatch):
    unet = build_unet().to("cuda", torch.float16).eval()
    forward = graph_forward(unet)
    tries = []

    def failing(*_):
        tries.append(1)
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(forward, "capture", failing)
    inputs = unet_inputs(unet, 2, 10)
    with torch.no_grad():
        first, second = unet(**inputs).sample, unet(**inputs).sample
        expected = forward.eager(**inputs).sample
    assert len(tries) == 1
    assert torch.equal(first, expected) and torch.equal(second, expected)


@gpu
def test_training_and_paused_calls_run_eager():
    unet = build_unet().to("cuda").train()
    forward = graph_forward(unet)
    loss = unet(**unet_inputs(unet, 2, 10)).sample.square().mean()
    loss.backward()  # a graph would have no autograd history
    assert next(unet.parameters()).grad is not None
    with torch.no_grad(), eager_forwards(unet):
        unet(**unet_inputs(unet, 2, 10))
    assert not forward.graphs


@gpu
@pytest.mark.parametrize("model", ["builtin:tiny-sd", "builtin:tiny-sdxl"])
def test_a_job_renders_the_same_bytes_with_and_without_graphs(model, write_job, tmp_path, capsys):
    images = {}
    for graphs in ("true", "false"):
        text = TINY_JOB.replace("builtin:tiny-sd", model).replace(
            "  batch_size: 4\n", f"  batch_size: 4\n  dtype: float16\n  cuda_graphs: {graphs}\n"
        )
        out = tmp_path / graphs
        job = write_job(text, name=f"{graphs}.yaml", out=out)
        code, _, err = cli(capsys, "run", job, "--distributor", "local")
        assert code == 0, err
        images[graphs] = images_by_item(out)
    assert len(images["true"]) == 9
    assert images["true"] == images["false"]


@gpu
def test_graphs_are_installed_for_a_fixed_batch_only():
    """`batch_size: auto` probes eager memory: a graph's pool held beside the VAE decode could
    overflow the batch it picks, so that UNet stays eager."""
    from augment.config import GenerationSpec, SpecPaths
    from augment.generate.pipelines import load_pipeline
    from augment.registry import resolve

    model = str(resolve("model", "builtin:tiny-sd", "test"))
    for batch, expected in ((4, True), ("auto", False)):
        settings = GenerationSpec(model=model, device="cuda", batch_size=batch)
        pipe = load_pipeline(settings, SpecPaths(model=model))
        assert (graphed(pipe.unet) is not None) == expected, batch
