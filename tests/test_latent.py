"""Latent NDM: the autoencoder's likelihood, the LSGM bound with an NDM prior, its training
stages, and latent runs through the command line."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from ndm.cli import main
from ndm.data.images import DIGITS_LEVELS, digits_split, to_model_space
from ndm.data.loading import load_splits
from ndm.diffusion.process import NeuralDiffusion
from ndm.diffusion.schedules import LinearVPSchedule
from ndm.diffusion.transforms import IdentityTransform
from ndm.evaluation.evaluate import evaluate
from ndm.models.autoencoder import (
    Autoencoder,
    discretised_logistic_log_prob,
    discretised_logistic_mode,
    gaussian_entropy,
    levels_of,
    standard_normal_cross_entropy,
)
from ndm.models.latent import LatentNDM, stage_at
from ndm.models.ndm import NDM
from ndm.runs.builders import build_latent_model
from ndm.runs.checkpoint import load_checkpoint, save_checkpoint
from ndm.runs.config import (
    DataConfig,
    EvalConfig,
    LatentConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from ndm.runs.folder import load_run
from ndm.runs.training import train

pytestmark = pytest.mark.usefixtures("single_thread")

L = DIGITS_LEVELS
TINY = (
    "--dataset digits --transform identity --steps 4 --autoencoder-steps 2 --latent-mode two_stage "
    "--latent-channels 2 --latent-hidden 8 --batch-size 8 --objective discrete --num-steps 10 "
    "--n-eval 4 --n-samples 8 --rtol 1e-2 --atol 1e-2 --nelbo-time-samples 2 "
    "--fid-samples 16 --fid-steps 4 --classifier-steps 5 --checkpoint-every 2 --log-every 1"
).split()


def digits(n: int = 4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` digits ``[n, 1, 8, 8]`` at their bin centres in ``[-1, 1]``."""
    return to_model_space(torch.from_numpy(digits_split().train[:n]), L).to(dtype)


def tiny_model(
    mode: str = "end_to_end",
    objective: str = "continuous",
    transform: str = "learned",
    process: str = "ndm",
) -> LatentNDM:
    torch.manual_seed(0)
    model = build_latent_model(
        ModelConfig(
            process=process,
            transform=transform,
            architecture="cpu8",
            objective=objective,
            num_steps=10,
        ),
        LatentConfig(latent_mode=mode, latent_channels=2, latent_hidden=8),
        (1, 8, 8),
        L,
    )
    return model.double()


def direct_decoder_nll(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """``-log P(x | m, s)`` from the sigmoid differences themselves, edges at ``+-inf``."""
    k = levels_of(x, L)
    centre, scale = (2 * k.to(mean.dtype) + 1) / L - 1, log_scale.exp()
    upper = torch.where(k == L - 1, 1.0, torch.sigmoid((centre + 1 / L - mean) / scale))
    lower = torch.where(k == 0, 0.0, torch.sigmoid((centre - 1 / L - mean) / scale))
    return -(upper - lower).log().flatten(1).sum(1)


@pytest.mark.parametrize("process", ["ndm", "nfdm"])
def test_bound_is_the_sum_of_independently_computed_parts(process):
    model, x = tiny_model(process=process), digits()
    terms = model.bound_terms(x, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        mean, log_std = model.autoencoder.encoder(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=x.dtype)
        y = mean + log_std.exp() * noise
        decoder = direct_decoder_nll(x, *model.autoencoder.decoder(y))
        entropy = torch.distributions.Normal(mean, log_std.exp()).entropy().flatten(1).sum(1)
        latent = model.ndm.loss_terms(y, generator)
    torch.testing.assert_close(terms.decoder, decoder)
    torch.testing.assert_close(terms.encoder, -entropy)
    torch.testing.assert_close(terms.latent.total, latent.total)
    torch.testing.assert_close(terms.total, decoder - entropy + latent.total)
    losses = model(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(losses["loss"], terms.total)
    torch.testing.assert_close(losses["nelbo"], terms.total)
    parts = ("decoder", "encoder", "prior", "diffusion", "reconstruction")
    torch.testing.assert_close(sum(losses[k] for k in parts), terms.total)


def test_entropy_and_vae_prior_term_match_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    log_std = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    q = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian_entropy(log_std), q.entropy().flatten(1).sum(1))
    standard = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = torch.distributions.kl_divergence(q, standard).flatten(1).sum(1)
    torch.testing.assert_close(
        standard_normal_cross_entropy(mean, log_std) - gaussian_entropy(log_std), kl
    )


def test_autoencoder_stage_is_the_vae_bound_with_a_standard_normal_prior():
    model, x = tiny_model(), digits()
    model.stage = "autoencoder"
    terms = model.bound_terms(x, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        mean, log_std = model.autoencoder.encoder(x)
        y = mean + log_std.exp() * torch.randn(mean.shape, generator=generator, dtype=x.dtype)
        q = torch.distributions.Normal(mean, log_std.exp())
        kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
        expected = direct_decoder_nll(x, *model.autoencoder.decoder(y)) + kl.flatten(1).sum(1)
    torch.testing.assert_close(terms.total, expected)
    assert float(terms.latent.diffusion.abs().sum()) == 0.0


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_decoder_probabilities_over_the_levels_sum_to_one(levels):
    generator = torch.Generator().manual_seed(levels)
    mean = 3 * torch.randn(50, generator=generator, dtype=torch.float64)
    log_scale = torch.empty(50, dtype=torch.float64).uniform_(-9, 3, generator=generator)
    k = torch.arange(levels)[:, None]
    log_p = discretised_logistic_log_prob(k, mean, log_scale, levels)
    assert log_p.shape == (levels, 50) and torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(50, dtype=torch.float64))
    # the log-space difference equals the difference of sigmoids where that is representable
    centre, scale = (2 * k.to(mean.dtype) + 1) / levels - 1, log_scale.exp()
    upper = torch.where(k == levels - 1, 1.0, torch.sigmoid((centre + 1 / levels - mean) / scale))
    lower = torch.where(k == 0, 0.0, torch.sigmoid((centre - 1 / levels - mean) / scale))
    direct = upper - lower
    big = direct > 1e-6
    torch.testing.assert_close(log_p.exp()[big], direct[big])
    # the mode is the argmax over all levels
    assert torch.equal(discretised_logistic_mode(mean, log_scale, levels), log_p.argmax(0))


class _IdentityEncoder(nn.Module):
    """``q(y | x) = N(x, s^2 I)``."""

    def __init__(self, log_std: float):
        super().__init__()
        self.log_std = log_std

    def forward(self, x):
        return x, torch.full_like(x, self.log_std)


class _SharpDecoder(nn.Module):
    """Discretised logistic centred at ``y`` with scale ``s``."""

    def __init__(self, log_scale: float):
        super().__init__()
        self.log_scale = log_scale

    def forward(self, y):
        return y, torch.full_like(y, self.log_scale)


class _StandardNormalPredictor(nn.Module):
    """``E[y | z_t] = alpha z / (alpha^2 + sigma^2)`` for ``y ~ N(0, I)`` and ``F = y``."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, z, t):
        values = self.schedule(t)
        alpha, sigma = values.alpha.reshape(-1, 1, 1, 1), values.sigma.reshape(-1, 1, 1, 1)
        return alpha * z / (alpha**2 + sigma**2)


def test_identity_like_encoder_and_exact_gaussian_prior_give_the_closed_form():
    """``q(y | x) = N(x, s^2 I)`` with tiny ``s``, a decoder certain of the level of ``y`` and
    the exact NDM of ``y ~ N(0, I)``: the ODE bound is
    ``0 + (-D log s - D/2 log(2 pi e)) + (|x|^2 / 2 + D/2 log(2 pi)) = |x|^2 / 2 - D log s - D/2``."""
    log_s = math.log(1e-3)
    schedule = LinearVPSchedule()
    ndm = NDM(NeuralDiffusion(schedule, IdentityTransform()), _StandardNormalPredictor(schedule))
    autoencoder = Autoencoder(_IdentityEncoder(log_s), _SharpDecoder(log_s), L)
    model = LatentNDM(autoencoder, ndm, (1, 8, 8), (1, 8, 8))
    x, dims = digits(3), 64
    bound, _ = model.nll(
        x, torch.Generator().manual_seed(0), divergence="exact", rtol=1e-7, atol=1e-7
    )
    expected = 0.5 * x.flatten(1).pow(2).sum(1) - dims * log_s - dims / 2
    torch.testing.assert_close(bound, expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("process", ["ndm", "nfdm"])
def test_end_to_end_gradients_reach_encoder_decoder_predictor_and_transform(process):
    model, x = tiny_model("end_to_end", process=process), digits()
    terms = model.bound_terms(x, torch.Generator().manual_seed(0))
    encoder = list(model.autoencoder.encoder.parameters())
    # the NDM's own terms reach the encoder through the reparameterised draw
    from_prior = torch.autograd.grad(terms.latent.total.sum(), encoder, retain_graph=True)
    assert any(float(g.abs().sum()) > 0 for g in from_prior)
    terms.total.sum().backward()
    parts = {
        "encoder": model.autoencoder.encoder,
        "decoder": model.autoencoder.decoder,
        "predictor": model.ndm.predictor,
        "transform": model.ndm.process.transform,
    }
    if process == "nfdm":
        parts["volatility"] = model.ndm.process.volatility
    for name, part in parts.items():
        assert any(
            p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters()
        ), name


def test_two_stage_trains_the_autoencoder_then_only_the_ndm():
    model, x = tiny_model("two_stage"), digits()
    model.stage = "diffusion"
    model(x, torch.Generator().manual_seed(0))["loss"].sum().backward()
    assert all(p.grad is None for p in model.autoencoder.parameters())
    for part in (model.ndm.predictor, model.ndm.process.transform):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())
    model.zero_grad(set_to_none=True)
    model.stage = "autoencoder"
    model(x, torch.Generator().manual_seed(0))["loss"].sum().backward()
    assert all(p.grad is None for p in model.ndm.parameters())
    for part in (model.autoencoder.encoder, model.autoencoder.decoder):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())
    assert [stage_at(step, 2) for step in (1, 2, 3)] == ["autoencoder"] * 2 + ["diffusion"]
    assert stage_at(1, 0) == "diffusion"


def test_bits_per_dim_divide_by_the_data_dimension():
    model = tiny_model(objective="discrete", transform="identity").float()
    splits = load_splits("digits", 1, 1, 0)
    metrics = evaluate(model, splits, EvalConfig(n_eval=3, rtol=1e-2, atol=1e-2, nelbo_terms=5))
    data_dims = 64
    assert metrics["latent_dims"] == 2 * 4 * 4 != data_dims
    for key in ("nll", "nelbo"):
        assert metrics[f"{key}_bpd"] == pytest.approx(metrics[key] / (data_dims * math.log(2)))
    parts = ("decoder", "encoder", "prior", "diffusion", "reconstruction")
    assert sum(metrics[f"nelbo_{k}_bpd"] for k in parts) == pytest.approx(metrics["nelbo_bpd"])
    assert sum(metrics[f"nelbo_{k}"] for k in parts) == pytest.approx(metrics["nelbo"])


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: LatentConfig(latent_mode="sideways"), "unknown latent_mode 'sideways'"),
        (lambda: LatentConfig(latent_channels=3), "need a latent NDM"),
        (lambda: LatentConfig(latent_mode="two_stage", autoencoder_steps=0), "autoencoder_steps"),
        (
            lambda: RunConfig(DataConfig("moons"), latent=LatentConfig(latent_mode="two_stage")),
            "encodes images",
        ),
        (
            lambda: RunConfig(
                data=DataConfig("digits"),
                model=ModelConfig(transform="identity", objective="simple"),
                latent=LatentConfig(latent_mode="end_to_end"),
            ),
            "objective 'simple'",
        ),
        (
            lambda: RunConfig(
                data=DataConfig("digits"),
                model=ModelConfig(kinetic_weight=0.1),
                latent=LatentConfig(latent_mode="end_to_end"),
            ),
            "kinetic-energy penalty is not implemented for a latent NDM",
        ),
    ],
)
def test_bad_latent_configs_are_refused(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        (["--latent-mode", "sideways"], 2, "invalid choice: 'sideways'"),
        (["--dataset", "moons"], 1, "encodes images"),
        (["--latent-mode", "none"], 1, "need a latent NDM"),
        (["--latent-downsample", "4"], 1, "divisible by 16"),
    ],
)
def test_bad_latent_options_give_one_clear_error(tmp_path, capsys, extra, code, fragment):
    run = tmp_path / "bad"
    assert main(["train", "--run-dir", str(run), *TINY, *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (run / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "latent"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pixel"
    pixel = TINY[: TINY.index("--autoencoder-steps")] + TINY[TINY.index("--batch-size") :]
    assert main(["train", "--run-dir", str(run), *pixel, "--fid-samples", "0"]) == 0
    return run


def test_latent_run_trains_in_stages_and_reports_data_bits_per_dim(latent_run):
    lines = [json.loads(line) for line in (latent_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["diffusion"] == 0 for line in lines] == [True, True, False, False]
    for line in lines:
        assert line["bits_per_dim"] == pytest.approx(line["loss"] / (64 * math.log(2)))
    m = json.loads((latent_run / "metrics.json").read_text())
    assert m["nelbo_bpd"] == pytest.approx(m["nelbo"] / (64 * math.log(2)))
    assert m["nll_bpd"] == pytest.approx(m["nll"] / (64 * math.log(2)))
    assert m["fid"] >= 0 and m["latent_dims"] == 32
    state = load_checkpoint(latent_run / "checkpoint.pt")
    # the frozen autoencoder of stage two is the one the EMA model carries
    for key, value in state["model"].items():
        if key.startswith("autoencoder."):
            torch.testing.assert_close(state["ema"][f"module.{key}"], value, rtol=0, atol=0)


def test_latent_samples_and_eval_through_the_command_line(latent_run, capsys):
    out = latent_run / "s.png"
    assert main(["sample", str(latent_run), "--sampler", "ddim", "--steps", "3", "--n", "5", "--out", str(out)]) == 0  # fmt: skip
    samples = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert samples.shape == (5, 1, 8, 8)
    levels = (samples + 1) * L / 2 - 0.5
    torch.testing.assert_close(levels, levels.round())
    assert set(levels.round().unique().tolist()) <= set(range(L))
    capsys.readouterr()
    assert main(["eval", str(latent_run), "--n-eval", "2", "--fid-samples", "0"]) == 0
    printed = capsys.readouterr().out
    assert "decoder -log p(x|y)" in printed and "latents of 32 dimensions" in printed


def test_a_run_of_the_other_kind_is_refused(latent_run, pixel_run, tmp_path, capsys):
    assert isinstance(load_run(latent_run, kind="latent")[1], LatentNDM)
    assert isinstance(load_run(pixel_run, kind="pixel")[1], NDM)
    with pytest.raises(ValueError, match="holds a pixel NDM, not a latent NDM"):
        load_run(pixel_run, kind="latent")
    with pytest.raises(ValueError, match="holds a latent NDM, not a pixel NDM"):
        load_run(latent_run, kind="pixel")
    # a config that no longer describes the weights
    edited = tmp_path / "edited"
    edited.mkdir()
    state = load_checkpoint(latent_run / "checkpoint.pt")
    state["config"]["latent"] = {}
    save_checkpoint(edited / "checkpoint.pt", state)
    assert main(["eval", str(edited)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "describes a pixel NDM but its weights are those of a latent" in err[0]
    # resuming a pixel run as a latent one
    args = ["train", "--run-dir", str(pixel_run), "--resume", "--steps", "8"]
    assert main([*args, "--latent-mode", "two_stage"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latent.latent_mode" in err[0], err


def _latent_config(steps: int) -> RunConfig:
    return RunConfig(
        data=DataConfig("digits"),
        model=ModelConfig(objective="discrete", num_steps=10),
        train=TrainConfig(
            steps=steps, batch_size=8, warmup_steps=5, checkpoint_every=2, log_every=1
        ),
        latent=LatentConfig(
            latent_mode="end_to_end", latent_channels=2, latent_hidden=8, autoencoder_steps=2
        ),
    )


def test_resume_across_the_stage_change_equals_an_uninterrupted_run(tmp_path):
    split, whole = tmp_path / "split", tmp_path / "whole"
    train(_latent_config(2), split)
    train(_latent_config(4), split, resume=True)
    train(_latent_config(4), whole)
    a, b = load_checkpoint(split / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in b[key])
    lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    # the warmup (5 steps) starts again with the second stage
    lr = _latent_config(4).train.lr
    assert [line["lr"] for line in lines] == pytest.approx([lr / 5, 2 * lr / 5] * 2)


def test_bf16_autocast_trains_a_latent_run_with_a_float32_decoder(tmp_path):
    model = tiny_model().float()
    with torch.autocast("cpu", torch.bfloat16):
        mean, log_scale = model.autoencoder.decoder(torch.randn(2, 2, 4, 4))
    assert mean.dtype == log_scale.dtype == torch.float32
    cfg = _latent_config(4)
    cfg = replace(cfg, train=replace(cfg.train, precision="bf16"))
    train(cfg, tmp_path / "bf16")
    lines = [
        json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 4 and all(math.isfinite(line["loss"]) for line in lines)


def test_a_latent_nll_past_its_step_limit_is_left_out_as_for_a_pixel_model():
    splits = load_splits("digits", 1, 1, 0)
    cfg = EvalConfig(n_eval=2, rtol=1e-5, atol=1e-5, nelbo_time_samples=2, nll_max_steps=1)
    metrics = evaluate(tiny_model().float(), splits, cfg)
    assert "nll" not in metrics and "within 1 dopri5 steps" in metrics["nll_failure"]
    assert math.isfinite(metrics["nelbo"]) and metrics["latent_dims"] == 2 * 4 * 4
