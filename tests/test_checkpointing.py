"""Activation checkpointing changes memory and time, never the gradients: for each objective,
each derivative of dF/dt and each choice of what is checkpointed."""

import pytest
import torch

from ndm.runs.builders import build_run_model
from ndm.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("error::UserWarning"),  # no fall back from jvp
]
CASES = [
    (objective, derivative, what, "residual")
    for objective in ("discrete", "continuous")
    for derivative in ("jvp", "double_backward")
    for what in ("transform", "all", "all_calls")
] + [("continuous", "jvp", "transform", "interpolation")]


def _model(architecture: str, objective: str, derivative: str, checkpointing: str, form: str):
    data = DataConfig("digits") if architecture == "cpu8" else DataConfig()
    model = ModelConfig(
        architecture=architecture,
        objective=objective,
        num_steps=10,
        transform_derivative=derivative,
        transform_init_scale=1.0,  # F moves, so its gradient is not trivially zero
        transform_form=form,
        hidden=16,
        depth=2,
    )
    cfg = RunConfig(data, model, TrainConfig(checkpointing=checkpointing))
    shape = (1, 8, 8) if architecture == "cpu8" else (2,)
    torch.manual_seed(0)
    return build_run_model(cfg, shape, 17 if architecture == "cpu8" else None).double(), shape


def _gradients_and_saved_bytes(model, x) -> tuple[list[torch.Tensor], int]:
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, torch.Generator().manual_seed(1))["loss"].mean()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], saved[0]


@pytest.mark.parametrize("architecture", ["mlp", "cpu8"])
@pytest.mark.parametrize(("objective", "derivative", "what", "form"), CASES)
def test_checkpointing_keeps_the_gradients_and_saves_less(
    architecture, objective, derivative, what, form
):
    plain, shape = _model(architecture, objective, derivative, "none", form)
    checked, _ = _model(architecture, objective, derivative, what, form)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = 2 * x - 1
    want, plain_bytes = _gradients_and_saved_bytes(plain, x)
    got, checked_bytes = _gradients_and_saved_bytes(checked, x)
    assert len(got) == len(want) == sum(1 for _ in plain.parameters())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert checked_bytes < plain_bytes


def test_checkpointing_is_refused_unless_known():
    with pytest.raises(ValueError, match="unknown checkpointing 'some'"):
        TrainConfig(checkpointing="some")
