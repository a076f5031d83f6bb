import pytest
import torch

from ndm.nets.unet import UNET_PRESETS, AttentionBlock, UNet, UNetConfig, build_unet

TINY = UNetConfig(8, (1, 2), 1, (4,), dropout=0.1, head_channels=8, groups=4)


def _net(zero_init_output=False, size=8, cfg=TINY) -> UNet:
    torch.manual_seed(0)
    return UNet(2, size, cfg, zero_init_output=zero_init_output).double().eval()


@pytest.mark.parametrize("size", [8, 7])
def test_shapes_andper_example_outputs(size):
    net = _net(size=size)
    x = torch.randn(3, 2, size, size, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    out = net(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(net(x[1:2], t[1:2]), out[1:2])
    assert sum(isinstance(m, AttentionBlock) for m in net.modules()) >= 2


def test_zero_init_output_starts_at_zero_and_still_trains():
    net = _net(zero_init_output=True)
    x, t = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    out = net(x, t)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert net.out[-1].weight.grad.abs().sum() > 0


def test_time_jvp_matches_finite_differences_float64():
    net = _net()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    # Give the zero-initialised convolutions weights so the time path is non-trivial.
    for p in net.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.2)
    f = lambda time: net(x, time)  # noqa: E731
    _, tangent = torch.func.jvp(f, (t,), (torch.ones_like(t),))
    h = 1e-6
    fd = (8 * (f(t + h) - f(t - h)) - (f(t + 2 * h) - f(t - 2 * h))) / (12 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)
    assert tangent.abs().max() > 1e-3


def test_presets_build_and_cpu28_is_about_one_and_a_half_million_parameters():
    x = torch.randn(2, 1, 28, 28)
    net = build_unet("cpu28", 1, 28)
    assert net(x, torch.rand(2)).shape == x.shape
    assert 1.0e6 < sum(p.numel() for p in net.parameters()) < 2.5e6
    for name, side in [("cpu8", 8), ("cpu16", 16)]:
        y = torch.randn(2, 1, side, side)
        assert build_unet(name, 1, side)(y, torch.rand(2)).shape == y.shape
    assert sum(p.numel() for p in build_unet("cifar10", 3, 32).parameters()) > 3e7
    assert {"cifar10", "imagenet32", "imagenet64"} <= set(UNET_PRESETS)


def test_unknown_preset_named():
    with pytest.raises(ValueError, match="unknown U-Net preset 'big'"):
        build_unet("big", 1, 8)
