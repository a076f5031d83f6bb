"""Activation checkpointing of the networks: keep a block's inputs, not its activations, and
recompute the block in the backward pass.

A network whose ``checkpointing`` attribute is set runs each block through :func:`block`,
which checkpoints it (PyTorch's non-reentrant ``torch.utils.checkpoint``) while autograd
records. Forward-mode AD (``torch.func.jvp``, the transform's default ``dF/dt``) cannot run
through a checkpointed block; :func:`whole_call` checkpoints such a call as one piece
instead, with the blocks inside it run plainly. Either way the gradients are those of the
step without checkpointing; only the memory and the time change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

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
