"""Loggers, tested against stand-ins for TensorBoard, Weights & Biases and MLflow, so that
the tests do not depend on which of them are installed."""

import sys
import types
from dataclasses import replace

import pytest
import torch

from ndm.cli import main
from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from ndm.runs.training import train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fakes(monkeypatch):
    """Stand-in modules recording every call as ``(logger, what, args)``."""
    calls = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("tensorboard", "open", purge_step))

        def add_scalar(self, name, value, step):
            calls.append(("tensorboard", "scalar", (name, step)))

        def add_image(self, name, image, step, dataformats):
            calls.append(("tensorboard", "image", (name, image.shape, dataformats)))

        def close(self):
            calls.append(("tensorboard", "close", None))

    class WandbRun:
        def log(self, values, step):
            calls.append(("wandb", "log", (sorted(values), step)))

        def finish(self):
            calls.append(("wandb", "close", None))

    def wandb_init(**kwargs):
        calls.append(("wandb", "open", (kwargs["id"], kwargs["resume"])))
        return WandbRun()

    mlflow_runs = iter(["run-a", "run-b"])

    def start_run(run_id=None, run_name=None):
        calls.append(("mlflow", "open", run_id))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or next(mlflow_runs)))

    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = Writer
    wandb = types.ModuleType("wandb")
    wandb.init, wandb.Image = wandb_init, lambda grid: grid
    mlflow = types.ModuleType("mlflow")
    mlflow.start_run, mlflow.end_run = start_run, lambda: calls.append(("mlflow", "close", None))
    mlflow.log_metrics = lambda values, step: calls.append(
        ("mlflow", "log", (sorted(values), step))
    )
    mlflow.log_dict = lambda data, name: None
    mlflow.log_image = lambda grid, key, step: calls.append(("mlflow", "image", (key, step)))
    for name, module in (("torch.utils.tensorboard", board), ("wandb", wandb), ("mlflow", mlflow)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def _cfg(steps: int) -> RunConfig:
    return RunConfig(
        DataConfig(n_train=128, n_test=16),
        ModelConfig(hidden=8, depth=1),
        TrainConfig(
            steps=steps,
            batch_size=16,
            warmup_steps=1,
            checkpoint_every=2,
            log_every=2,
            loggers="tensorboard,wandb,mlflow",
        ),  # fmt: skip
        EvalConfig(n_eval=8),
    )


def test_each_logger_gets_the_training_lines_and_a_resume_continues_its_run(tmp_path, fakes):
    run = tmp_path / "run"
    train(_cfg(4), run)
    train(_cfg(6), run, resume=True)
    opened = [(who, arg) for who, what, arg in fakes if what == "open"]
    wandb_ids = {arg for who, arg in opened if who == "wandb"}
    assert len(wandb_ids) == 1 and next(iter(wandb_ids))[1] == "allow"  # one id, resumed
    assert [arg for who, arg in opened if who == "mlflow"] == [None, "run-a"]
    assert [arg for who, arg in opened if who == "tensorboard"] == [None, 5]  # purged after 4
    for who in ("wandb", "mlflow"):
        steps = [arg[1] for w, what, arg in fakes if w == who and what == "log"]
        assert steps == [2, 4, 6]
        logged = next(arg[0] for w, what, arg in fakes if w == who and what == "log")
        assert "train/loss" in logged and "train/lr" in logged and "train/step" not in logged
    assert sum(1 for _, what, _ in fakes if what == "close") == 6


def test_evaluation_metrics_and_samples_go_to_the_loggers(tmp_path, fakes):
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), "--dataset", "digits", "--steps", "2",
            "--batch-size", "8", "--warmup-steps", "1", "--loggers", "wandb,tensorboard",
            "--eval", "fast", "--n-eval", "8", "--n-samples", "8"]  # fmt: skip
    assert main(args) == 0
    evaluated = [
        arg for who, what, arg in fakes if who == "wandb" and what == "log" and arg[1] == 2
    ]
    assert any("eval/nll_bpd" in names for names, _ in evaluated)
    assert ("tensorboard", "image") in {(who, what) for who, what, _ in fakes}
    assert main(["eval", str(run), "--n-eval", "4", "--rtol", "1e-2", "--atol", "1e-2"]) == 0


def test_a_logger_that_is_not_installed_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--loggers", "wandb", "--steps", "2"]) == 1
    assert "needs the wandb package" in capsys.readouterr().err
    assert not run.exists()
    with pytest.raises(ValueError, match="unknown loggers \\['comet'\\]"):
        train(replace(_cfg(2), train=replace(_cfg(2).train, loggers="comet")), run)


def test_image_grids_are_padded():
    from ndm.runs.loggers import uint8_grid

    grid = uint8_grid(torch.zeros(3, 1, 4, 4), columns=2)
    assert grid.shape == (2 * 6, 2 * 6, 3) and grid.dtype.name == "uint8"
    assert (grid[0] == 255).all() and (grid[1, 1:5] == 128).all() and (grid[1, 5:7] == 255).all()
