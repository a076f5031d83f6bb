"""Activation checkpointing of the networks: keep a block's inputs, not its activations, and
recompute the block in the backward pass.

A network whose ``checkpointing`` attribute is set runs each block through :func:`block`,
which checkpoints it (PyTorch's non-reentrant ``torch.utils.checkpoint``) while autograd
records. Forward-mode AD (``torch.func.jvp``, the transform's default ``dF/dt``) cannot run
through a checkpointed block. The networks of this package therefore also run forward in
:class:`Dual` numbers, a value and its derivative in ``t``, block by block
(:func:`tangent_call`): each block's Jacobian-vector product is checkpointed on its own.
For any other network, :func:`whole_call` checkpoints the whole ``jvp`` call as one piece.
Either way the gradients are those of the step without checkpointing; only the memory and
the time change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

#: What a run checkpoints: nothing, the transform's network, or every network.
CHECKPOINTING = ("none", "transform", "all")

_blocks_plain = 0  # depth of :func:`whole_call`s in progress, whose blocks run plainly


def block(network: nn.Module, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``fn(*args)``, checkpointed when ``network.checkpointing`` is set, autograd records,
    and no :func:`whole_call` is in progress."""
    if getattr(network, "checkpointing", False) and torch.is_grad_enabled() and not _blocks_plain:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


@contextlib.contextmanager
def _plain_blocks() -> Iterator[None]:
    global _blocks_plain
    _blocks_plain += 1
    try:
        yield
    finally:
        _blocks_plain -= 1


def whole_call(fn: Callable[..., Any], *args: Tensor) -> Any:
    """``fn(*args)`` checkpointed as one piece while autograd records (its blocks run
    plainly inside): for calls that forward-mode AD runs through."""

    def plain(*inputs: Tensor) -> Any:
        with _plain_blocks():
            return fn(*inputs)

    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(plain, *args, use_reentrant=False)


def set_checkpointing(module: nn.Module, enabled: bool) -> None:
    """Set ``checkpointing`` on every network inside ``module`` that has the attribute."""
    for part in module.modules():
        if hasattr(part, "checkpointing"):
            part.checkpointing = enabled


class Dual(NamedTuple):
    """A tensor and its derivative in ``t`` (its tangent), of the same shape."""

    primal: Tensor
    tangent: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.primal.shape


def constant(x: Tensor) -> Dual:
    """``x`` as a :class:`Dual` that does not depend on ``t``."""
    return Dual(x, torch.zeros_like(x))


def dual_cat(parts: list[Dual], dim: int) -> Dual:
    """``torch.cat`` of values and of tangents."""
    return Dual(
        torch.cat([p.primal for p in parts], dim), torch.cat([p.tangent for p in parts], dim)
    )


def tangent_call(fn: Callable[..., Tensor], *inputs: Dual, blockwise: bool = False) -> Dual:
    """``fn`` and its Jacobian-vector product at ``inputs``: ``Dual(fn(p), J_fn(p) d)``.
    With ``blockwise`` the product is checkpointed (:func:`whole_call`), so that only the
    inputs are kept for the backward pass."""
    count = len(inputs)

    def run(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(fn, tensors[:count], tensors[count:])

    tensors = [d.primal for d in inputs] + [d.tangent for d in inputs]
    return Dual(*(whole_call(run, *tensors) if blockwise else run(*tensors)))
