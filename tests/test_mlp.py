import pytest
import torch
from torch.func import jvp

from ndm.nets.mlp import TimeMLP, sinusoidal_embedding


def _net(**kw):
    torch.manual_seed(0)
    return TimeMLP(3, hidden=64, depth=2, time_embed_dim=32, **kw)


def test_output_shape_and_dtype():
    net = _net()
    x, t = torch.randn(5, 3), torch.rand(5)
    y = net(x, t)
    assert y.shape == (5, 3) and y.dtype == torch.float32
    assert torch.allclose(net(x, torch.tensor(0.3)), net(x, torch.full((5,), 0.3)))
    yd = net.double()(x.double(), t.double())
    assert yd.dtype == torch.float64
    assert torch.allclose(yd.float(), y, atol=1e-5)


def test_sinusoidal_embedding():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    e = sinusoidal_embedding(t, 8)
    assert e.shape == (3, 8) and e.dtype == torch.float64
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4, dtype=torch.float64))
    # highest frequency is 1000 rad per unit t
    assert torch.allclose(e[2, 0], torch.sin(torch.tensor(1000.0, dtype=torch.float64)))
    assert torch.allclose(e[:, :4] ** 2 + e[:, 4:] ** 2, torch.ones(3, 4, dtype=torch.float64))
    odd = sinusoidal_embedding(t, 7)
    assert odd.shape == (3, 7) and torch.equal(odd[:, -1], torch.zeros(3, dtype=torch.float64))


def test_zero_init_output_is_exactly_zero():
    net = _net(zero_init_output=True)
    y = net(torch.randn(4, 3), torch.rand(4))
    assert torch.equal(y, torch.zeros(4, 3))
    assert torch.count_nonzero(_net()(torch.randn(4, 3), torch.rand(4))) > 0


# torch's forward-mode decompositions are loaded via torch.jit.script on first use
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jvp_in_t_matches_finite_difference_float64():
    net = _net().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(6, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    y, dy = jvp(lambda s: net(x, s), (t,), (torch.ones_like(t),))
    assert torch.allclose(y, net(x, t))
    h = 1e-7
    fd = (net(x, t + h) - net(x, t - h)) / (2 * h)
    rel = (dy - fd).norm() / dy.norm()
    assert rel < 1e-6, rel


def test_batch_independence():
    net = _net()
    x, t = torch.randn(8, 3), torch.rand(8)
    y = net(x, t)
    x2, t2 = x.clone(), t.clone()
    x2[1:] = torch.randn(7, 3)
    t2[1:] = torch.rand(7)
    assert torch.allclose(net(x2, t2)[0], y[0], atol=1e-6)
    assert torch.allclose(net(x[:1], t[:1])[0], y[0], atol=1e-6)
    # Jacobian of the batched output w.r.t. the input is block-diagonal across rows
    jac = torch.autograd.functional.jacobian(lambda z: net(z, t), x)  # [8, 3, 8, 3]
    off = jac.clone()
    off[torch.arange(8), :, torch.arange(8), :] = 0
    assert torch.equal(off, torch.zeros_like(off))
