"""With ``F = x`` and the schedule of the same ``alphas_cumprod`` table, the ancestral and
DDIM steps equal those of diffusers' ``DDPMScheduler`` (fixed small variance) and
``DDIMScheduler`` for the same noise predictions and noise (to 1e-10 in float64)."""

import pytest
import torch

from ndm import IdentityTransform, NeuralDiffusion, Predictor, TableVPSchedule

diffusers = pytest.importorskip("diffusers")

NUM_TRAIN = 1000
SHAPE = (4, 3, 8, 8)


class FixedNoise(torch.nn.Module):
    """A "network" that returns the given noise prediction whatever its input."""

    def __init__(self, eps: torch.Tensor) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps


def _setup(scheduler, seed: int):
    # diffusers keeps its table in float32 and forms 1 - alpha_t / alpha_s there, which
    # loses about 1e-5; in float64 both sides compute the same formulas from the same table.
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    if isinstance(scheduler, diffusers.DDIMScheduler):
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    schedule = TableVPSchedule(scheduler.alphas_cumprod)
    process = NeuralDiffusion(schedule, IdentityTransform())
    return z, eps, process, Predictor(FixedNoise(eps), schedule, "eps")


def _times(k: int, prev: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Our times of diffusers' timesteps ``k`` and ``prev``: ``t = (k + 1) / N``."""
    return (
        torch.full((SHAPE[0],), (prev + 1) / NUM_TRAIN, dtype=torch.float64),
        torch.full((SHAPE[0],), (k + 1) / NUM_TRAIN, dtype=torch.float64),
    )


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("k", [999, 500, 37, 1])
def test_ancestral_step_equals_ddpm_scheduler(schedule, k):
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=NUM_TRAIN,
        beta_schedule=schedule,
        variance_type="fixed_small",
        clip_sample=False,
        prediction_type="epsilon",
    )
    z, eps, process, predictor = _setup(scheduler, k)
    theirs = scheduler.step(eps, k, z, generator=torch.Generator().manual_seed(7)).prev_sample
    s, t = _times(k, k - 1)
    post = process.posterior(z, predictor(z, t), s, t, eta=1.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours = post.mean + post.std[:, None, None, None] * noise
    assert (ours - theirs).abs().max() <= 1e-10
    assert post.std.min() > 0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("num_inference_steps", [10, 50])
def test_ddim_steps_equal_ddim_scheduler(eta, num_inference_steps):
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=NUM_TRAIN,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(num_inference_steps)
    ratio = NUM_TRAIN // num_inference_steps
    checked = 0
    for k in scheduler.timesteps.tolist():
        prev = k - ratio
        if prev < 0:  # diffusers then uses alphas_cumprod[0] (set_alpha_to_one=False) as t = 0
            continue
        z, eps, process, predictor = _setup(scheduler, k)
        theirs = scheduler.step(
            eps, k, z, eta=eta, generator=torch.Generator().manual_seed(3)
        ).prev_sample
        s, t = _times(k, prev)
        post = process.posterior(z, predictor(z, t), s, t, eta=eta)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        ours = post.mean + post.std[:, None, None, None] * noise
        assert (ours - theirs).abs().max() <= 1e-10, k
        checked += 1
    assert checked == num_inference_steps - 1


def test_table_schedule_reproduces_the_table_and_rejects_bad_tables():
    betas = torch.linspace(1e-4, 0.02, NUM_TRAIN, dtype=torch.float64)
    table = torch.cumprod(1 - betas, 0)
    schedule = TableVPSchedule(table)
    t = torch.arange(1, NUM_TRAIN + 1, dtype=torch.float64) / NUM_TRAIN
    torch.testing.assert_close(schedule(t).alpha ** 2, table)
    assert 0 < float(schedule(torch.zeros(1, dtype=torch.float64)).sigma) < float(betas[0].sqrt())
    with pytest.raises(ValueError, match="decrease strictly"):
        TableVPSchedule(table.flip(0))
