"""Time-conditioned U-Net for images, in the style of Dhariwal & Nichol (2021).

``UNet(x [B, C, H, W], t [B]) -> [B, C, H, W]``. Residual blocks take the time embedding
through a scale-shift (``GroupNorm(h) * (1 + s) + b``), self-attention runs at the chosen
resolutions, and the resolution halves after every level but the last. Every operation
has a forward-mode derivative, so ``torch.func.jvp`` in ``t`` works through the network
(the learned transform ``F_phi`` needs ``dF/dt``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ndm.nets.checkpointing import (
    Dual,
    block,
    constant,
    dual_cat,
    network_call,
    tangent_call,
)
from ndm.nets.mlp import sinusoidal_embedding


@dataclass(frozen=True)
class UNetConfig:
    """Width ``channels``; level ``i`` has ``channels * channel_mult[i]`` channels and
    ``num_res_blocks`` residual blocks; attention where the side length is in
    ``attention_resolutions``, with heads of ``head_channels`` channels."""

    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    dropout: float = 0.0
    head_channels: int = 64
    groups: int = 32


UNET_PRESETS: dict[str, UNetConfig] = {
    # Small enough to train on a 2-core CPU.
    "cpu8": UNetConfig(32, (1, 2), 1, (4,), head_channels=32, groups=8),
    "cpu16": UNetConfig(16, (1, 2, 2), 1, (4,), head_channels=32, groups=8),
    "cpu28": UNetConfig(32, (1, 2, 2), 2, (7,), head_channels=32, groups=16),
    # Paper-size networks, meant for a GPU (improved-diffusion / guided-diffusion settings).
    "cifar10": UNetConfig(128, (1, 2, 2, 2), 3, (16, 8), dropout=0.3),
    "imagenet32": UNetConfig(128, (1, 2, 2, 2), 3, (16, 8), dropout=0.1),
    "imagenet64": UNetConfig(192, (1, 2, 3, 4), 3, (32, 16, 8), dropout=0.1),
}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (or float64) on a contiguous input and returned in the
    input's dtype; under bfloat16 autocast ``group_norm``'s forward-mode derivative needs
    the contiguous float32 copy."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        return super().forward(x.float().contiguous()).to(x.dtype)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= groups`` that divides ``channels``."""
    return GroupNorm32(math.gcd(channels, groups), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``h + conv(drop(silu(GN(conv(silu(GN(h)))) * (1 + s) + b)))``, ``(s, b) = Linear(temb)``;
    the last convolution starts at zero so the block starts as the identity."""

    def __init__(self, cin: int, cout: int, temb: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1)
        )
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(temb, 2 * cout))
        self.out_norm = group_norm(cout, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual, output at zero."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, hgt * wid))
        q, k, v = qkv.reshape(b * self.heads, 3 * c // self.heads, hgt * wid).chunk(3, dim=1)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c // self.heads), dim=-1)
        out = (v @ weights.transpose(1, 2)).reshape(b, c, hgt * wid)
        return x + self.proj(out).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    """Strided 3x3 convolution: side ``n -> ceil(n / 2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to ``size`` then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(nn.functional.interpolate(x, size=size, mode="nearest"))


class _Stage(nn.Module):
    """A residual block optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        x = self.res(x, temb)
        return x if self.attn is None else self.attn(x)


class UNet(nn.Module):
    """``x [B, C, H, W]``, ``t [B]`` in ``[0, 1]`` -> ``[B, C_out, H, W]`` (``C_out = C`` unless
    ``out_channels`` is given).

    ``t`` enters through :func:`~ndm.nets.mlp.sinusoidal_embedding` and a two-layer SiLU MLP.
    ``image_size`` fixes where attention runs (by side length). ``zero_init_output=True``
    zeroes the final convolution so the output starts at exactly 0. With ``checkpointing``
    set, each residual and attention block is checkpointed (:mod:`ndm.nets.checkpointing`).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        config: UNetConfig,
        zero_init_output: bool = False,
        out_channels: int | None = None,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        cfg = config
        ch, groups = cfg.channels, cfg.groups
        temb = 4 * ch
        self.channels, self.time_scale = ch, time_scale
        self.checkpointing = "none"  # or "blocks", "calls": see ndm.nets.checkpointing
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_channels, ch, 3, padding=1)

        def stage(cin: int, cout: int, side: int) -> _Stage:
            attn = (
                AttentionBlock(cout, cfg.head_channels, groups)
                if side in cfg.attention_resolutions
                else None
            )
            return _Stage(ResBlock(cin, cout, temb, cfg.dropout, groups), attn)

        self.down = nn.ModuleList()
        skips, sides, side, cur = [ch], [], image_size, ch
        for level, mult in enumerate(cfg.channel_mult):
            sides.append(side)
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(stage(cur, ch * mult, side))
                cur = ch * mult
                skips.append(cur)
            down = None
            if level < len(cfg.channel_mult) - 1:
                down = Downsample(cur)
                skips.append(cur)
                side = (side + 1) // 2
            self.down.append(nn.ModuleDict({"blocks": blocks, **({"down": down} if down else {})}))

        self.middle = nn.ModuleList(
            [
                ResBlock(cur, cur, temb, cfg.dropout, groups),
                AttentionBlock(cur, cfg.head_channels, groups),
                ResBlock(cur, cur, temb, cfg.dropout, groups),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(stage(cur + skips.pop(), ch * mult, sides[level]))
                cur = ch * mult
            up = Upsample(cur) if level > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, **({"up": up} if up else {})}))

        self.out = nn.Sequential(
            group_norm(cur, groups),
            nn.SiLU(),
            nn.Conv2d(cur, out_channels or in_channels, 3, padding=1),
        )
        if zero_init_output:
            _zero(self.out[-1])

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x`` [B, C, H, W], ``t`` [B] or scalar -> [B, C_out, H, W]."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return network_call(self, self._value, x, t)

    def _value(self, x: Tensor, t: Tensor) -> Tensor:
        return self._layers(x, self._embed(t.to(x.dtype)), self._call, torch.cat)

    def value_and_time_derivative(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(net(x, t), d net(x, t) / dt)``, each [B, C_out, H, W], with the derivative
        carried forward block by block and each block's product checkpointed
        (:func:`~ndm.nets.checkpointing.tangent_call`)."""
        return network_call(self, self._value_and_time_derivative, x, t)

    def _value_and_time_derivative(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones_like(t)
        temb = Dual(*torch.func.jvp(lambda time: self._embed(time.to(x.dtype)), (t,), (ones,)))
        out = self._layers(constant(x), temb, tangent_call, dual_cat)
        return out.primal, out.tangent

    def _embed(self, t: Tensor) -> Tensor:
        return self.time_mlp(sinusoidal_embedding(t, self.channels, self.time_scale))

    def _call(self, fn: Callable[..., Tensor], *inputs: Tensor, blockwise: bool = False) -> Tensor:
        return block(self, fn, *inputs) if blockwise else fn(*inputs)

    def _layers(self, x: Any, temb: Any, call: Callable[..., Any], cat: Callable[..., Any]) -> Any:
        """The network on ``x`` and the time embedding ``temb``: tensors with ``call`` a
        (checkpointed) call and ``cat`` ``torch.cat``, or their :class:`Dual` versions."""
        h = call(self.inp, x)
        hs = [h]
        for level in self.down:
            for stage in level["blocks"]:
                h = call(stage, h, temb, blockwise=True)
                hs.append(h)
            if "down" in level:
                h = call(level["down"], h)
                hs.append(h)
        h = call(self.middle[0], h, temb, blockwise=True)
        h = call(self.middle[1], h, blockwise=True)
        h = call(self.middle[2], h, temb, blockwise=True)
        for level in self.up:
            for stage in level["blocks"]:
                h = call(stage, cat([h, hs.pop()], dim=1), temb, blockwise=True)
            if "up" in level:
                h = call(partial(level["up"], size=hs[-1].shape[-2:]), h)
        return call(self.out, h)


def build_unet(
    preset: str,
    in_channels: int,
    image_size: int,
    zero_init_output: bool = False,
    out_channels: int | None = None,
    time_scale: float = 1000.0,
    width: float = 1.0,
) -> UNet:
    """The U-Net of ``UNET_PRESETS[preset]`` for ``in_channels``-channel square images,
    with ``out_channels`` outputs (default ``in_channels``), its time embedding at
    ``time_scale * t``, and ``width`` times the preset's channels (rounded, at least 1)."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    config = UNET_PRESETS[preset]
    config = replace(config, channels=max(1, round(config.channels * width)))
    return UNet(in_channels, image_size, config, zero_init_output, out_channels, time_scale)
