"""The special cases of the paper's Table 1, built as ``ndm train`` builds them.

Each marginal test checks ``q(z_t | x)`` of the model that :func:`ndm.runs.builders.build_model`
makes from the case's options against the closed form of :data:`ndm.runs.special_cases.SPECIAL_CASES`,
computed here independently of the package: exactly, through ``z_t = marginal(x, t, eps)``
for given ``eps`` at times covering ``[0, 1]``, and by the moments of many draws at one time.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from torch import Tensor

from ndm.cli import build_parser
from ndm.losses.objectives import continuous_diffusion_integrand
from ndm.models.ndm import NDM
from ndm.runs.builders import build_model
from ndm.runs.config import ModelConfig, TrainConfig, config_from_args
from ndm.runs.special_cases import SPECIAL_CASES, special_case_config, special_case_flags

pytestmark = pytest.mark.usefixtures("single_thread")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "python.md"
TIMES = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)  # both ends included
DRAWS = 10_000
SIGMAS_ALLOWED = 5.0  # tolerance of the sampling check, in standard errors
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0  # where VDM's learned ends start
SIGMA_MIN = 1e-4  # flow matching's sigma_min


def _build(name: str, shape: tuple[int, ...] = (2,)) -> NDM:
    torch.manual_seed(0)
    return build_model(special_case_config(name, hidden=16, depth=1), shape).double()


def _linear_vp(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha_t, sigma_t)`` of ``beta(u) = 0.1 + 19.9 u``, ``u = 1e-5 + (1 - 1e-5) t``:
    ``alpha^2 = exp(-int_0^u beta)``, ``sigma^2 = 1 - alpha^2``."""
    u = 1e-5 + (1 - 1e-5) * t
    integral = 0.1 * u + 0.5 * 19.9 * u**2
    return torch.exp(-0.5 * integral), torch.sqrt(-torch.expm1(-integral))


@torch.no_grad()
def _check_marginal(model: NDM, x: Tensor, t: Tensor, mean: Tensor, std: Tensor) -> None:
    """``q(z_t | x) = N(mean, std^2 I)`` for one example ``x [1, ...]`` at times ``t [K]``
    (``mean [K, ...]``, ``std [K]``).

    Exactly: ``z_t = mean + std eps`` for ``eps`` given to ``marginal``. By sampling at the
    middle time: the mean of ``DRAWS`` draws is within ``SIGMAS_ALLOWED`` standard errors
    ``std / sqrt(n)`` of ``mean``, their variance within as many of ``std^2 sqrt(2 / (n - 1))``.
    """
    per_time = (-1,) + (1,) * (x.dim() - 1)
    noise = torch.randn(len(t), *x.shape[1:], dtype=x.dtype)
    z, _ = model.process.marginal(x.expand(len(t), *x.shape[1:]), t, noise)
    torch.testing.assert_close(z, mean + std.reshape(per_time) * noise)

    k = len(t) // 2
    generator = torch.Generator().manual_seed(1)
    draws = torch.randn(DRAWS, *x.shape[1:], dtype=x.dtype, generator=generator)
    z, _ = model.process.marginal(x.expand_as(draws), t[k].expand(DRAWS), draws)
    error = SIGMAS_ALLOWED * float(std[k]) / math.sqrt(DRAWS)
    assert float((z.mean(0) - mean[k]).abs().max()) < error
    error = SIGMAS_ALLOWED * float(std[k]) ** 2 * math.sqrt(2 / (DRAWS - 1))
    assert float((z.var(0) - std[k] ** 2).abs().max()) < error


def test_ddpm_marginal_is_linear_vp_around_x():
    model = _build("ddpm")
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    alpha, sigma = _linear_vp(TIMES)
    _check_marginal(model, x, TIMES, alpha[:, None] * x, sigma)


def test_flow_matching_marginal_is_the_ot_path():
    """``N((1 - t) x, (sigma_min + (1 - sigma_min) t)^2 I)``: ``z_0 = x + sigma_min eps``,
    ``z_1 = eps``."""
    model = _build("flow_matching")
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    _check_marginal(model, x, TIMES, (1 - TIMES)[:, None] * x, SIGMA_MIN + (1 - SIGMA_MIN) * TIMES)


def test_flow_matching_needs_the_x_parameterisation():
    """``alpha_1 = 0``: the ``eps`` predictor would divide by it, the ``x`` one does not."""
    options = dict(SPECIAL_CASES["flow_matching"].options)
    with pytest.raises(ValueError, match="alpha_1 = 0"):
        ModelConfig(**(options | {"parameterisation": "eps"}))
    model = _build("flow_matching")
    one = torch.ones(8, dtype=torch.float64)
    with torch.no_grad():
        x_hat = model.predictor(torch.randn(8, 2, dtype=torch.float64), one)
    assert bool(torch.isfinite(x_hat).all())


def test_flow_matching_nelbo_weight_and_velocity_loss():
    """With ``F = x`` the NELBO integrand is ``(1 - t) ||x - x_hat||^2 / sigma_t^3``, and flow
    matching's velocity loss ``||v - v_hat||^2`` (``v = dz_t/dt`` at fixed ``x``, ``eps``)
    is ``||x - x_hat||^2 / sigma_t^2``."""
    model = _build("flow_matching")
    generator = torch.Generator().manual_seed(2)
    x, noise = torch.randn(2, 64, 2, dtype=torch.float64, generator=generator)
    t = 0.02 + 0.96 * torch.rand(64, dtype=torch.float64, generator=generator)
    alpha, sigma = (1 - t)[:, None], (SIGMA_MIN + (1 - SIGMA_MIN) * t)[:, None]
    z = alpha * x + sigma * noise
    with torch.no_grad():
        x_hat = model.predictor(z, t)
    gap = (x - x_hat).detach().pow(2).sum(1)
    assert float(gap.min()) > 0 and float(gap.mean()) > 0.1
    integrand = continuous_diffusion_integrand(model.process, model.predictor, x, t, noise)
    torch.testing.assert_close(integrand, (1 - t) * gap / sigma[:, 0] ** 3)
    noise_hat = (z - alpha * x_hat) / sigma
    velocity_gap = -(x - x_hat) + (1 - SIGMA_MIN) * (noise - noise_hat)
    torch.testing.assert_close(velocity_gap.pow(2).sum(1), gap / sigma[:, 0] ** 2)


def _vdm_gamma(model: NDM, t: Tensor) -> Tensor:
    """VDM's ``gamma_eta(t)`` from the schedule's parameters, in NumPy:
    ``gamma_min + (gamma_max - gamma_min) (h(t) - h(0)) / (h(1) - h(0))``,
    ``h(t) = l1(t) + l3(sigmoid(l2(l1(t))))``, every weight through ``softplus``, and the
    ends ``gamma_min`` and ``log(gamma_max - gamma_min)``."""
    p = {k: v.detach().numpy() for k, v in model.process.schedule.state_dict().items()}
    softplus = lambda w: np.logaddexp(0.0, w)  # noqa: E731

    def h(time: np.ndarray) -> np.ndarray:
        u = softplus(p["l1.weight"][0, 0]) * time + p["l1.bias"][0]
        hidden = 1 / (1 + np.exp(-(u[:, None] * softplus(p["l2.weight"][:, 0]) + p["l2.bias"])))
        return u + hidden @ softplus(p["l3.weight"][0]) + p["l3.bias"][0]

    ends = h(np.array([0.0, 1.0]))
    fraction = (h(t.numpy()) - ends[0]) / (ends[1] - ends[0])
    gamma_min, log_width = p["endpoints.learned"]
    return torch.from_numpy(gamma_min + np.exp(log_width) * fraction)


def _bend(model: NDM) -> None:
    """Move the learned schedule far from its near-linear start: steep sigmoids in ``h``
    with enough weight to make ``gamma_eta`` S-shaped."""
    schedule = model.process.schedule
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        schedule.l1.weight.zero_()
        schedule.l1.bias.zero_()
        schedule.l2.weight.normal_(10.0, 1.0, generator=generator)
        schedule.l2.bias.normal_(-5.0, 1.0, generator=generator)
        schedule.l3.weight.normal_(0.0, 1.0, generator=generator)


def test_vdm_marginal_has_the_learned_alpha_and_sigma():
    """``N(alpha_t x, sigma_t^2 I)`` with ``alpha^2 = sigmoid(-gamma_eta)``,
    ``sigma^2 = sigmoid(gamma_eta)``, for parameters far from the near-linear start."""
    model = _build("vdm")
    assert model.predictor.schedule is model.process.schedule
    _bend(model)
    gamma = _vdm_gamma(model, TIMES)
    linear = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * TIMES
    assert float((gamma - linear).abs().max()) > 1.0
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    _check_marginal(model, x, TIMES, alpha[:, None] * x, sigma)


def test_vdm_schedule_and_its_ends_are_trained_with_the_model():
    """As in VDM, the prior and reconstruction terms send gradients to the ends only, and
    the diffusion term to the shape of ``gamma_eta`` (and to the ends); an AdamW step moves
    the ends and the shape, keeps ``gamma`` increasing and its ends where the parameters say."""
    model = _build("vdm")
    _bend(model)
    schedule = model.process.schedule
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 2, dtype=torch.float64, generator=generator)
    params = dict(schedule.named_parameters())
    assert "endpoints.learned" in params
    terms = model.loss_terms(x, generator)
    ends_grads = torch.autograd.grad(
        (terms.prior + terms.reconstruction).sum(), list(params.values()), retain_graph=True
    )
    for name, grad in zip(params, ends_grads, strict=True):
        # both ends: gamma_1 sets the prior term, gamma_0 the reconstruction term
        if name == "endpoints.learned":
            assert bool((grad.abs() > 1e-6).all()), grad
        else:  # zero up to rounding
            torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0, msg=name)
    diffusion_grads = torch.autograd.grad(terms.diffusion.sum(), list(params.values()))
    for name, grad in zip(params, diffusion_grads, strict=True):
        # l3's bias cancels in h(t) - h(0); every other parameter shapes gamma.
        assert (float(grad.abs().max()) > 0) == (name != "l3.bias"), name

    grid = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    with torch.no_grad():
        before = schedule(grid).gamma
    optimizer = torch.optim.AdamW(model.parameters(), lr=TrainConfig().lr)
    model.loss(x, generator).mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = schedule(grid).gamma
    assert float((after[1:-1] - before[1:-1]).abs().max()) > 1e-6  # rounding is ~1e-13
    ends = torch.tensor(schedule.endpoints.values(), dtype=torch.float64)
    assert float((ends - torch.tensor([GAMMA_MIN, GAMMA_MAX])).abs().min()) > 1e-6
    torch.testing.assert_close(after[[0, -1]], ends)
    assert bool((after.diff() > 0).all())
    torch.testing.assert_close(after, _vdm_gamma(model, grid))


def _heat_blur(image: np.ndarray, t: float) -> np.ndarray:
    """``B_t x`` of one ``[H, W]`` image with SciPy's orthonormal DCT: every cosine mode
    ``(u, v)`` scaled by ``(1 - d_min) exp(-lambda s_t^2 / 2) + d_min``,
    ``lambda = pi^2 (u^2 / H^2 + v^2 / W^2)``, ``s_t = 0.625 max(H, W) sin^2(pi t / 2)``."""
    height, width = image.shape
    u, v = np.arange(height)[:, None] / height, np.arange(width)[None, :] / width
    s = 0.625 * max(height, width) * math.sin(math.pi * t / 2) ** 2
    scale = (1 - 1e-3) * np.exp(-(math.pi**2) * (u**2 + v**2) * s**2 / 2) + 1e-3
    return scipy.fft.idctn(scale * scipy.fft.dctn(image, norm="ortho"), norm="ortho")


def test_blurring_marginal_is_the_heat_blur_of_x():
    model = _build("blurring", shape=(1, 8, 8))
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    blurred = np.stack([_heat_blur(x[0, 0].numpy(), t) for t in TIMES.tolist()])[:, None]
    assert float(np.abs(blurred[-1] - x[0].numpy()).max()) > 0.5
    alpha, sigma = _linear_vp(TIMES)
    mean = alpha[:, None, None, None] * torch.from_numpy(blurred)
    _check_marginal(model, x, TIMES, mean, sigma)


def test_ndm_marginal_is_around_the_learned_transform():
    """``N(alpha_t F_phi(x, t), sigma_t^2 I)`` with ``F_phi = x + t NN_phi(x, t)`` for a
    network moved off its zero output, so ``F`` is not ``x`` except at ``t = 0``."""
    model = _build("ndm")
    net = model.process.transform.net
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    with torch.no_grad():
        f = x + TIMES[:, None] * net(x.expand(len(TIMES), 2), TIMES)
    assert float((f[-1] - x).abs().max()) > 0.05
    alpha, sigma = _linear_vp(TIMES)
    _check_marginal(model, x, TIMES, alpha[:, None] * f, sigma)


@pytest.mark.parametrize("name", sorted(SPECIAL_CASES))
def test_train_flags_select_the_case(name):
    args = build_parser().parse_args(["train", "--dataset", "digits", *special_case_flags(name)])
    assert config_from_args(args).model == special_case_config(name)


def test_bad_case_or_option_rejected():
    with pytest.raises(ValueError, match="unknown special case 'lsgm'"):
        special_case_config("lsgm")
    with pytest.raises(ValueError, match="unknown special case"):
        special_case_flags("DDPM")
    with pytest.raises(ValueError, match=r"\['transform'\] define the special case 'ddpm'"):
        special_case_config("ddpm", transform="learned")
    with pytest.raises(ValueError, match=r"unknown model options \['widht'\]"):
        special_case_config("ddpm", widht=3)


def test_the_guide_table_lists_every_case_with_its_flags_and_test():
    section = GUIDE.read_text().split("## The special cases of Table 1", 1)[1].split("\n#")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    for name in SPECIAL_CASES:
        (row,) = [r for r in rows if f"(`{name}`)" in r]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] == f"`{' '.join(special_case_flags(name))}`", row
        for test_name in re.findall(r"`(test_\w+)`", cells[4]):
            assert callable(globals().get(test_name)), test_name
        assert re.search(r"`test_\w+`", cells[4]), row
