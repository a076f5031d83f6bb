"""Time-conditioned MLP for low-dimensional data."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ndm.nets.checkpointing import Dual, block, constant, network_call, tangent_call


def sinusoidal_embedding(
    t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0
) -> Tensor:
    """Sinusoidal embedding of times ``t`` [B] (in [0, 1]) -> [B, dim].

    ``t`` is multiplied by ``scale`` and embedded as ``[sin(s t f_k), cos(s t f_k)]`` with
    ``f_k = max_period ** (-k / half)``, ``k = 0..half-1``; an odd ``dim`` gets a trailing
    zero column. The embedding is smooth in ``t`` and keeps ``t``'s floating dtype.
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    half = dim // 2
    k = torch.arange(half, dtype=t.dtype, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    args = (scale * t)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _ResBlock(nn.Module):
    """``h + W2 silu(W1 silu(h) + Wt temb)``."""

    def __init__(self, hidden: int, time_hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(time_hidden, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        z = self.lin1(self.act(h)) + self.time(temb)
        return h + self.lin2(self.act(z))


class TimeMLP(nn.Module):
    """Residual MLP ``f(x, t)`` with ``x`` [B, dim], ``t`` [B] in [0, 1] -> [B, out_dim]
    (``out_dim = dim`` unless given).

    ``t`` is embedded with :func:`sinusoidal_embedding` (at ``time_scale * t``) followed by
    a two-layer SiLU MLP;
    the embedding conditions every one of the ``depth`` residual blocks. The map is
    smooth in ``t`` and each output row depends only on the matching input row.
    ``zero_init_output=True`` zeroes the final layer so the output starts at exactly 0.
    With ``checkpointing`` set, each residual block is checkpointed
    (:mod:`ndm.nets.checkpointing`).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_embed_dim: int = 64,
        zero_init_output: bool = False,
        out_dim: int | None = None,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.time_embed_dim = time_embed_dim
        self.time_scale = time_scale
        self.checkpointing = "none"  # or "blocks", "calls": see ndm.nets.checkpointing
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim or dim))
        if zero_init_output:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x`` [B, dim], ``t`` [B] or scalar -> [B, out_dim]."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return network_call(self, self._value, x, t)

    def _value(self, x: Tensor, t: Tensor) -> Tensor:
        return self._layers(x, self._embed(t.to(x.dtype)), self._call)

    def value_and_time_derivative(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(net(x, t), d net(x, t) / dt)``, each [B, out_dim], with the derivative carried
        forward block by block and each block's product checkpointed
        (:func:`~ndm.nets.checkpointing.tangent_call`)."""
        return network_call(self, self._value_and_time_derivative, x, t)

    def _value_and_time_derivative(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones_like(t)
        temb = Dual(*torch.func.jvp(lambda time: self._embed(time.to(x.dtype)), (t,), (ones,)))
        out = self._layers(constant(x), temb, tangent_call)
        return out.primal, out.tangent

    def _embed(self, t: Tensor) -> Tensor:
        return self.time_mlp(sinusoidal_embedding(t, self.time_embed_dim, self.time_scale))

    def _call(self, fn: Callable[..., Tensor], *inputs: Tensor, blockwise: bool = False) -> Tensor:
        return block(self, fn, *inputs) if blockwise else fn(*inputs)

    def _layers(self, x: Any, temb: Any, call: Callable[..., Any]) -> Any:
        """The network on ``x`` and the time embedding ``temb``: tensors with ``call`` a
        (checkpointed) call, or their :class:`Dual` versions with ``tangent_call``."""
        h = call(self.inp, x)
        for residual in self.blocks:
            h = call(residual, h, temb, blockwise=True)
        return call(self.out, h)
