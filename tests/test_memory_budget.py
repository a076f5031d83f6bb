"""Micro-batches chosen for a memory budget: the arithmetic of the choice, the probes'
measure, and a budgeted run that takes the same steps as one given that ``grad_accum``,
records it and resumes with it."""

import math
import warnings
from dataclasses import replace

import pytest
import torch

from ndm.data.host_memory import GIB
from ndm.runs.checkpoint import load_checkpoint
from ndm.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig, read_config_file
from ndm.runs.inputs import load_data
from ndm.runs.memory import (
    HEADROOM,
    budget_bytes,
    micro_batches_to_fit,
    pass_bytes,
    planned_bytes,
    probe_bytes,
    state_bytes,
)
from ndm.runs.state import TrainState
from ndm.runs.training import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(**train) -> RunConfig:
    return RunConfig(
        DataConfig("digits"),
        ModelConfig(architecture="cpu8", objective="discrete", num_steps=10),
        TrainConfig(
            **{"steps": 2, "batch_size": 8, "warmup_steps": 1, "loggers": "none", "device": "cpu"}
            | train
        ),
    )


def test_fewest_micro_batches_whose_need_fits_the_headroom():
    # e = 3, c = 2: need(m) = 10 + 2 + 3 m
    assert planned_bytes(10, 5, 8, 4) == 24
    budget = math.ceil(24 / HEADROOM)  # fits m = 4, not m = 8
    assert micro_batches_to_fit(budget, 10, 5, 8, 16) == 4
    assert micro_batches_to_fit(10**6, 10, 5, 8, 16) == 1
    # m = 5 would fit but does not divide 12: 3 micro-batches of 4
    assert micro_batches_to_fit(math.ceil(27 / HEADROOM), 10, 5, 8, 12) == 3
    with pytest.raises(ValueError, match="one example needs"):
        micro_batches_to_fit(math.floor(15 / HEADROOM), 10, 5, 8, 16)


def test_budget_in_gib_and_auto_needs_cuda():
    assert budget_bytes("1.5", torch.device("cpu")) == int(1.5 * GIB)
    with pytest.raises(ValueError, match="CUDA"):
        budget_bytes("auto", torch.device("cpu"))
    for bad in ("-1", "0", "lots", "inf"):
        with pytest.raises(ValueError, match="memory_budget"):
            TrainConfig(memory_budget=bad)


def test_probes_grow_with_the_batch_and_leave_no_trace():
    cfg = _cfg()
    splits = load_data(cfg.data)
    state = TrainState.create(cfg, splits.shape, splits.num_levels, torch.device("cpu"))
    before = torch.get_rng_state()
    at_one, at_two = probe_bytes(cfg, state.model, splits, torch.device("cpu"))
    assert 0 < at_one < at_two < 2.5 * at_one  # activations, plus a share that does not grow
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.grad is None for p in state.model.parameters())
    params = sum(p.numel() for p in state.model.parameters()) * 4
    assert state_bytes(state.model, state.ema) == 5 * params


class _ExpLoss(torch.nn.Module):
    """``loss = sum exp(w x)``: ``w x`` and its exponential (saved for the backward pass)
    are held at once, and each of the backward pass's buffers replaces one of them."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, generator):
        return {"loss": (self.w * x).exp().sum(1)}


def test_cpu_peak_is_the_most_a_pass_holds_at_once():
    x = torch.randn(256, 1024)  # 1 MiB
    model, before = _ExpLoss(), torch.get_rng_state()
    peak = pass_bytes(model, x, torch.Generator(), False, peak=True)
    assert 2 * 2**20 <= peak < 2 * 2**20 + 2**14  # two 1 MiB tensors, and scalars
    assert torch.equal(torch.get_rng_state(), before) and model.w.grad is None
    saved = pass_bytes(model, x, torch.Generator(), False)
    assert saved == 2 * 2**20  # x and exp(w x); w is a parameter


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def test_budgeted_run_takes_the_steps_of_its_grad_accum_and_resumes_with_it(tmp_path, capsys):
    cfg = _cfg()
    splits = load_data(cfg.data)
    state = TrainState.create(cfg, splits.shape, splits.num_levels, torch.device("cpu"))
    probes = probe_bytes(cfg, state.model, splits, torch.device("cpu"))
    need = planned_bytes(state_bytes(state.model, state.ema), *probes, 2)  # 4 x 2 examples
    budget = f"{(need / HEADROOM + 1) / GIB:.12f}"

    train(_cfg(memory_budget=budget), tmp_path / "budget")
    assert "4 micro-batches of 2 per step" in capsys.readouterr().out
    recorded = read_config_file(tmp_path / "budget" / "config.json")
    assert recorded.train.grad_accum == 4 and recorded.train.memory_budget == budget
    train(_cfg(grad_accum=4), tmp_path / "given")
    given, budgeted = _weights(tmp_path / "given"), _weights(tmp_path / "budget")
    for key, value in given.items():
        assert torch.equal(budgeted[key], value), key

    train(_cfg(memory_budget=budget, steps=1), tmp_path / "split")
    train(_cfg(memory_budget=budget), tmp_path / "split", resume=True)
    resumed = _weights(tmp_path / "split")
    for key, value in given.items():
        assert torch.equal(resumed[key], value), key
    with pytest.raises(ValueError, match="memory_budget"):
        train(_cfg(memory_budget="64", steps=3), tmp_path / "split", resume=True)
    with pytest.raises(ValueError, match="not both"):
        train(_cfg(memory_budget=budget, grad_accum=2), tmp_path / "both")


def test_probes_of_a_jvp_transform_keep_its_derivative():
    cfg = replace(_cfg(), model=ModelConfig(architecture="cpu8", objective="continuous"))
    splits = load_data(cfg.data)
    state = TrainState.create(cfg, splits.shape, splits.num_levels, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fall back from jvp to double backward
        at_one, at_two = probe_bytes(cfg, state.model, splits, torch.device("cpu"))
    assert 0 < at_one < at_two
    assert not state.model.process.transform._no_forward_mode
