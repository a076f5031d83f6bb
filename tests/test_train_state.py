"""The resumable state of a run: a state_dict round trip restores every part, and the
restored state continues exactly as the original."""

import copy
import time

import pytest
import torch

from ndm.data.loading import load_splits
from ndm.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ndm.runs.distributed import init_distributed
from ndm.runs.inputs import draw_micro_batches
from ndm.runs.optim import optimisation_step
from ndm.runs.state import STATE_KEYS, TrainState

pytestmark = pytest.mark.usefixtures("single_thread")

CFG = RunConfig(
    DataConfig(n_train=128, n_test=16),
    ModelConfig(hidden=16, depth=1),
    TrainConfig(steps=4, batch_size=8, grad_accum=2, warmup_steps=3),
)


def _advance(state: TrainState, splits, steps: int) -> None:
    place = init_distributed("cpu")
    for step in range(state.step + 1, state.step + steps + 1):
        began = time.perf_counter()
        batches = draw_micro_batches(splits, CFG, place, step, state.batches)
        values = optimisation_step(state.model, state.optimizer, batches, CFG, place)
        state.finish_step(step, values, began)


def _flat(state: TrainState) -> dict[str, torch.Tensor]:
    params = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    ema = {f"ema.{k}": v for k, v in state.ema.state_dict().items()}
    return params | ema


def test_state_dict_round_trip_restores_every_part_and_continues_identically():
    splits = load_splits("checkerboard", 128, 16, 0)
    device = torch.device("cpu")
    original = TrainState.create(CFG, splits.shape, None, device)
    _advance(original, splits, 2)
    saved = copy.deepcopy(original.state_dict())  # as a checkpoint on disk holds it
    assert set(saved) == set(STATE_KEYS) and saved["step"] == 2 and len(saved["window"]) == 2

    restored = TrainState.create(CFG, splits.shape, None, device)
    _advance(restored, splits, 3)  # a state elsewhere in the run, and the global RNG moved on
    restored.load_state_dict(saved)
    assert restored.step == 2 and restored.window == original.window
    assert restored.scheduler.last_epoch == original.scheduler.last_epoch == 2
    assert torch.equal(restored.batches.get_state(), original.batches.get_state())
    for key, value in _flat(original).items():
        torch.testing.assert_close(_flat(restored)[key], value, rtol=0, atol=0, msg=key)

    torch.set_rng_state(saved["rng"]["cpu"])
    _advance(original, splits, 2)
    restored.load_state_dict(saved)
    _advance(restored, splits, 2)
    timed = "seconds_per_step"
    assert [{k: v for k, v in w.items() if k != timed} for w in original.window] == [
        {k: v for k, v in w.items() if k != timed} for w in restored.window
    ]
    for key, value in _flat(original).items():
        torch.testing.assert_close(_flat(restored)[key], value, rtol=0, atol=0, msg=key)
