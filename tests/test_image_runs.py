"""End to end on images: train on the built-in 8x8 digits, sample, evaluate with FID."""

import json
import math

import pytest
import torch

from ndm.cli import main
from ndm.runs.folder import load_run

TINY = (
    "--dataset digits --steps 2 --batch-size 8 --objective discrete --num-steps 10 "
    "--n-eval 4 --n-samples 8 --rtol 1e-2 --atol 1e-2 --nelbo-time-samples 2 "
    "--fid-samples 16 --fid-steps 4 --classifier-steps 5 --checkpoint-every 2 --log-every 1"
).split()


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    return run


def test_image_run_writes_figures_and_bits_per_dim(image_run):
    for name in ("samples.png", "transform.png", "predictions.png"):
        assert (image_run / name).read_bytes().startswith(b"\x89PNG")
    m = json.loads((image_run / "metrics.json").read_text())
    dims = 64
    # NELBO and ODE NLL of the dequantised data both add log2(17 / 2) to bound the levels
    offset = math.log2(17 / 2)
    assert m["nelbo_bpd"] == pytest.approx(m["nelbo"] / (dims * math.log(2)) + offset)
    assert m["nll_bpd"] == pytest.approx(m["nll"] / (dims * math.log(2)) + offset)
    terms = sum(m[f"nelbo_{k}_bpd"] for k in ("prior", "diffusion", "reconstruction"))
    assert terms == pytest.approx(m["nelbo_bpd"])
    assert m["nll_divergence"] == "hutchinson"
    assert m["fid"] >= 0 and 0 <= m["classifier_test_accuracy"] <= 1
    line = json.loads((image_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["bits_per_dim"] == pytest.approx(line["loss"] / (dims * math.log(2)) + offset)


def test_image_samples_lie_on_the_data_levels(image_run):
    out = image_run / "s.png"
    assert main(["sample", str(image_run), "--sampler", "ddim", "--steps", "3", "--n", "5", "--out", str(out)]) == 0  # fmt: skip
    samples = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert samples.shape == (5, 1, 8, 8)
    levels = (samples + 1) * 17 / 2 - 0.5
    torch.testing.assert_close(levels, levels.round())
    assert set(levels.round().unique().tolist()) <= set(range(17))


@pytest.mark.parametrize("transform", ["blur", "separable"])
def test_blur_and_separable_transforms_train_on_images(tmp_path, transform):
    run = tmp_path / transform
    args = ["train", "--run-dir", str(run), *TINY, "--transform", transform, "--fid-samples", "0"]
    assert main([*args, "--transform-basis", "3"]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["transform"] == transform
    _, model = load_run(run)
    x = torch.rand(2, 1, 8, 8)
    assert model.process.transform.value(x, torch.full((2,), 0.5)).sub(x).abs().max() > 0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dataset", "fashion_mnist"], "path"),
        (["--dataset", "digits", "--architecture", "mlp"], "architecture 'mlp'"),
        (["--dataset", "moons", "--architecture", "cpu8"], "U-Net"),
        (["--dataset", "moons", "--transform", "blur"], "blur"),
        (["--dataset", "digits", "--batch-size", "9", "--grad-accum", "2"], "does not split"),
    ],
)
def test_bad_image_options_give_one_clear_error(tmp_path, capsys, extra, fragment):
    run = tmp_path / "bad"
    assert main(["train", "--run-dir", str(run), *TINY, *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("transform", ["learned", "separable"])
@pytest.mark.parametrize("objective", ["continuous", "discrete"])
def test_bf16_autocast_trains_the_learned_transforms(tmp_path, objective, transform):
    """bfloat16 autocast (as on a GPU) through the JVP of the learned transform and the
    closed-form derivative of the separable one."""
    run = tmp_path / objective
    args = ["train", "--run-dir", str(run), *TINY, "--precision", "bf16", "--fid-samples", "0"]
    args += ["--transform", transform]
    args[args.index("--objective") + 1] = objective
    assert main(args) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert len(train_lines) == 2 and all(math.isfinite(line["loss"]) for line in train_lines)


def test_training_batches_are_dequantised_with_fresh_noise():
    from ndm.data.loading import load_splits, model_input

    splits = load_splits("digits", 1, 1, 0)
    batch = splits.train[:64]
    x1 = model_input(batch, splits, torch.Generator().manual_seed(1), augment=True)
    x2 = model_input(batch, splits, torch.Generator().manual_seed(2), augment=True)
    assert torch.equal(torch.floor((x1 + 1) * 17 / 2).long(), batch.long())  # in each level's bin
    centre = model_input(batch, splits, None, augment=False)
    within = (x1 - centre) * 17 / 2  # position in the bin, uniform on [-1/2, 1/2)
    assert abs(float(within.mean())) < 0.01 and float(within.var()) == pytest.approx(
        1 / 12, rel=0.05
    )
    assert not torch.equal(x1, x2)


def test_a_tiny_digits_model_has_nll_and_nelbo_within_one_bit(tmp_path):
    """Trained and scored on the same dequantised density, the ODE NLL and the discrete
    NELBO of one model bound the same discrete likelihood, and agree."""
    from ndm.evaluation.evaluate import evaluate
    from ndm.runs.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
    from ndm.runs.inputs import load_data
    from ndm.runs.training import train

    cfg = RunConfig(
        DataConfig(dataset="digits"),
        ModelConfig(transform="identity", objective="discrete", num_steps=100),
        TrainConfig(steps=80, batch_size=32, warmup_steps=20, checkpoint_every=1000),
        EvalConfig(n_eval=32, rtol=1e-2, atol=1e-2),
    )
    model = train(cfg, tmp_path / "run").eval()
    m = evaluate(model, load_data(cfg.data), cfg.eval)
    assert abs(m["nelbo_bpd"] - m["nll_bpd"]) < 1.0, (m["nelbo_bpd"], m["nll_bpd"])
    assert m["nelbo_bpd"] < 6 and m["nll_bpd"] < 6  # against 8.01 bits/dim before
    bound_only = evaluate(model, load_data(cfg.data), cfg.eval, with_nll=False)
    assert not any(key.startswith("nll") for key in bound_only)
    assert bound_only["nelbo_bpd"] == pytest.approx(m["nelbo_bpd"], abs=0.2)
