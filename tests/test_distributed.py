"""Data-parallel training: two gloo processes under torchrun against one process."""

import json
import os
import subprocess
import sys

import torch

from ndm.runs.checkpoint import load_checkpoint

TINY = [
    "--dataset", "moons", "--n-train", "256", "--n-test", "64", "--hidden", "16", "--depth", "1",
    "--steps", "4", "--batch-size", "32", "--warmup-steps", "2", "--device", "cpu",
    "--n-eval", "8", "--n-samples", "16", "--rtol", "1e-2", "--atol", "1e-2",
    "--nelbo-time-samples", "2",
]  # fmt: skip
# two steps of the autoencoder stage (the NDM unused), two of the diffusion stage (the frozen
# autoencoder unused)
TINY_LATENT = [
    "--dataset", "digits", "--n-train", "64", "--n-test", "8", "--transform", "identity",
    "--latent-mode", "two_stage", "--autoencoder-steps", "2", "--latent-channels", "2",
    "--latent-hidden", "8", "--objective", "discrete", "--num-steps", "10", "--steps", "4",
    "--batch-size", "8", "--warmup-steps", "2", "--log-every", "1", "--device", "cpu",
    "--n-eval", "2", "--n-samples", "2", "--rtol", "1e-1", "--atol", "1e-1",
    "--nelbo-time-samples", "2", "--fid-samples", "0",
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _train(command: list[str]) -> None:
    # one thread in every process (torchrun's default for its workers), so that the two runs
    # sum the same per-example gradients in the same order
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _models(tmp_path, names):
    return [load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in names]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Two processes with 16 examples each take the same steps as one process that
    accumulates two micro-batches of 16: the parameters agree after 4 steps."""
    _train([*TORCHRUN, "-m", "ndm.cli", "train", "--run-dir", str(tmp_path / "ddp"), *TINY])
    _train([sys.executable, "-m", "ndm.cli", "train", "--run-dir", str(tmp_path / "one"),
            "--grad-accum", "2", *TINY])  # fmt: skip
    _train([sys.executable, "-m", "ndm.cli", "train", "--run-dir", str(tmp_path / "plain"),
            *TINY])  # fmt: skip
    ddp, one, plain = _models(tmp_path, ("ddp", "one", "plain"))
    for name, value in one.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6)
    # the comparison can fail: other noise (one micro-batch of 32) gives other parameters
    gap = max(float((plain[name] - value).abs().max()) for name, value in one.items())
    assert gap > 1e-4
    assert (tmp_path / "ddp" / "metrics.json").is_file()


def test_two_processes_train_a_two_stage_latent_run_as_one_process(tmp_path):
    """A latent run leaves parameters without gradient in each stage (DDP with unused
    parameters): two processes still take the steps of one process accumulating their two
    micro-batches, and the autoencoder stays frozen in the diffusion stage."""
    _train([*TORCHRUN, "-m", "ndm.cli", "train", "--run-dir", str(tmp_path / "ddp"),
            *TINY_LATENT])  # fmt: skip
    _train([sys.executable, "-m", "ndm.cli", "train", "--run-dir", str(tmp_path / "one"),
            "--grad-accum", "2", *TINY_LATENT])  # fmt: skip
    _train([sys.executable, "-m", "ndm.cli", "train", "--run-dir", str(tmp_path / "plain"),
            *TINY_LATENT])  # fmt: skip
    ddp, one, plain = _models(tmp_path, ("ddp", "one", "plain"))
    assert any(name.startswith("autoencoder.") for name in one)
    for name, value in one.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6)
    gap = max(float((plain[name] - value).abs().max()) for name, value in one.items())
    assert gap > 1e-4
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["diffusion"] == 0 for line in lines] == [True, True, False, False]
    # the EMA of the autoencoder restarted at the stage change: equal weights mean no step
    # moved the frozen autoencoder (no zero gradient of DDP, no weight decay)
    state = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    for name, value in state["model"].items():
        if name.startswith("autoencoder."):
            torch.testing.assert_close(state["ema"][f"module.{name}"], value, rtol=0, atol=0)
    assert (tmp_path / "ddp" / "metrics.json").is_file()
