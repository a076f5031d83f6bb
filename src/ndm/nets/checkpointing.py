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

#: What a run checkpoints: nothing; the blocks of the transform's network; the blocks of
#: every network; or every network's blocks and each whole call (least memory, most time).
CHECKPOINTING = ("none", "transform", "all", "all_calls")
#: How a network checkpoints (its ``checkpointing`` attribute): not at all, each block, or
#: each block and each whole call of the network.
LEVELS = ("none", "blocks", "calls")

_blocks_plain = 0  # depth of :func:`whole_call`s in progress, whose blocks run plainly


def _checkpointed(network: nn.Module, level: str) -> bool:
    """Whether ``network`` checkpoints at ``level`` (``"blocks"`` or ``"calls"``) now."""
    wanted = getattr(network, "checkpointing", "none")
    reaches = wanted == "calls" or (wanted == "blocks" and level == "blocks")
    return reaches and torch.is_grad_enabled() and not _blocks_plain


def block(network: nn.Module, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """A block ``fn(*args)`` of ``network``, checkpointed when the network checkpoints its
    blocks, autograd records, and no :func:`whole_call` is in progress."""
    if _checkpointed(network, "blocks"):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def network_call(network: nn.Module, fn: Callable[..., Any], *args: Tensor) -> Any:
    """A whole call ``fn(*args)`` of ``network``, checkpointed when it checkpoints its calls:
    only the inputs are kept; the backward pass recomputes the call, keeping the blocks'
    inputs, and then each block in turn (nested checkpoints: one more forward pass)."""
    if _checkpointed(network, "calls"):
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


def set_checkpointing(module: nn.Module, level: str) -> None:
    """Set ``checkpointing`` to ``level`` (one of :data:`LEVELS`) on every network inside
    ``module`` that has the attribute."""
    if level not in LEVELS:
        raise ValueError(f"unknown checkpointing level {level!r}; choose one of {LEVELS}")
    for part in module.modules():
        if hasattr(part, "checkpointing"):
            part.checkpointing = level


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
