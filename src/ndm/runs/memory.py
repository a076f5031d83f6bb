"""Micro-batches that fit a memory budget, chosen before the first step.

The memory of a training step is the training state (parameters, their EMA, gradients and
AdamW's two moments) and the activations of one micro-batch, which grow with its size:
``need(m) = state + c + m * e``. ``e`` and ``c`` come from two probe passes (forward and
backward, no update) of the run's model at micro-batches of 1 and 2 examples: on CUDA the
growth of the peak allocation, on a CPU the bytes of the tensors autograd saves for the
backward pass (each storage once, parameters left out). The run then takes the fewest
micro-batches per step whose size fits ``HEADROOM`` of the budget; the global batch, the
optimisation and the noise of each micro-batch follow ``grad_accum`` as if it were given.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import DeviceType

from ndm.data.host_memory import GIB, require_memory
from ndm.data.loading import Splits, model_input
from ndm.runs.builders import mlp_weights
from ndm.runs.config import NO_BUDGET, RunConfig
from ndm.runs.distributed import Distributed
from ndm.runs.inputs import micro_batch_size

#: The share of the budget a step is planned to use; the rest is left to the allocator's
#: fragmentation and to buffers no probe sees (cuDNN workspaces, DDP's gradient buckets).
HEADROOM = 0.9


def check_host_memory(cfg: RunConfig, splits: Splits, place: Distributed) -> None:
    """Refuse, with the size needed, what the host cannot hold: one micro-batch of inputs
    with its indices, and an MLP's training state (its ``depth`` hidden layers of
    ``hidden^2`` weights, for the predictor and a learned transform; 5 x their bytes). The
    U-Net presets have fixed sizes."""
    size = micro_batch_size(cfg, place)
    require_memory(f"a micro-batch of {size}", size * (8 + 4 * math.prod(splits.shape)))
    if splits.is_image or cfg.model.architecture not in ("auto", "mlp"):
        return
    weights = mlp_weights(cfg.model)
    require_memory(f"an MLP of {cfg.model.hidden} hidden units (training state)", 5 * 4 * weights)


def budget_bytes(budget: str, device: torch.device) -> int:
    """The bytes ``budget`` allows: a number of GiB, or ``auto``: the CUDA device's memory
    that is free or already this process's."""
    if budget != "auto":
        return int(float(budget) * GIB)
    if device.type != "cuda":
        raise ValueError(
            f"memory_budget auto reads the free memory of a CUDA device; on {device} give "
            "the budget in GiB"
        )
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_allocated(device)


def state_bytes(model: nn.Module, ema: nn.Module) -> int:
    """Bytes of the training state: the parameters and their EMA, and for each trainable
    parameter its gradient and AdamW's two moments."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    size += sum(p.numel() * p.element_size() for p in ema.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return size + 3 * trainable


@contextlib.contextmanager
def _saved_storages(model: nn.Module, sizes: dict[int, int]) -> Iterator[None]:
    """Record in ``sizes`` (storage address: bytes) each storage autograd saves for the
    backward pass, but the parameters'; a tensor without a storage of its own (one of
    ``torch.func``'s wrappers inside ``jvp``) by its own bytes, keyed by its identity."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except RuntimeError:  # raising here would make jvp fall back to double backward
            key, size = id(t), t.numel() * t.element_size()
        if key not in params:
            sizes[key] = size
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _allocation_peak(profiler: torch.profiler.profile) -> int:
    """The peak, in bytes, of what torch allocated on the CPU and had not released, over
    the profiled block: the running sum of the profiler's allocation (positive) and
    release (negative) records in time order."""
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    )
    held = peak = 0
    for _, size in records:
        held += size
        peak = max(peak, held)
    return peak


def pass_bytes(
    model: nn.Module, x: Tensor, generator: torch.Generator, bf16: bool, peak: bool = False
) -> int:
    """Bytes one forward and backward pass of the loss on ``x`` adds to what the process
    holds: the peak allocation's growth (on CUDA, and on a CPU with ``peak``, from the
    profiler's record of every allocation), or on a CPU the saved tensors' storages, which
    leave out the passes' transient buffers and are what the planner extrapolates.
    The parameters' gradients are left unset, and the random state as it was."""
    device = x.device
    sizes: dict[int, int] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            recording = contextlib.nullcontext()
        elif peak:
            recording = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
        else:
            recording = _saved_storages(model, sizes)
        with recording as profiler:  # the backward pass's recomputations too
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = model(x, generator)["loss"].float().mean()
            loss.backward()
            del loss
        model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _allocation_peak(profiler) if peak else sum(sizes.values())


def probe_bytes(
    cfg: RunConfig, model: nn.Module, splits: Splits, device: torch.device
) -> tuple[int, int]:
    """:func:`pass_bytes` of ``model`` on the first 1 and 2 training examples."""
    probes = []
    for size in (1, 2):
        generator = torch.Generator(device).manual_seed(cfg.train.seed)
        x = model_input(splits.train[:size].to(device), splits, generator, augment=True)
        probes.append(pass_bytes(model, x, generator, cfg.train.precision == "bf16"))
    return probes[0], probes[1]


def planned_bytes(state: int, at_one: int, at_two: int, size: int) -> int:
    """``need(m) = state + c + m e`` at a micro-batch of ``size`` examples, with
    ``e = at_two - at_one`` and ``c = at_one - e`` from the probes at 1 and 2 examples."""
    each = max(at_two - at_one, 0)
    return state + at_one - each + size * each


def micro_batches_to_fit(
    budget: int, state: int, at_one: int, at_two: int, per_process: int
) -> int:
    """The fewest micro-batches ``k`` (dividing ``per_process``) whose size
    ``per_process / k`` fits :func:`planned_bytes` into ``HEADROOM * budget``;
    ``ValueError`` when a micro-batch of one example does not fit."""
    for k in range(1, per_process + 1):
        fits = planned_bytes(state, at_one, at_two, per_process // k) <= HEADROOM * budget
        if per_process % k == 0 and fits:
            return k
    raise ValueError(
        f"a micro-batch of one example needs {planned_bytes(state, at_one, at_two, 1) / GIB:.2f}"
        f" GiB (training state {state / GIB:.2f} GiB), more than {HEADROOM:.0%} of the memory "
        f"budget of {budget / GIB:.2f} GiB; raise the budget or use --checkpointing"
    )


def with_fitted_micro_batches(
    cfg: RunConfig, model: nn.Module, ema: nn.Module, splits: Splits, place: Distributed
) -> RunConfig:
    """``cfg`` with ``grad_accum`` chosen for its ``memory_budget`` (unchanged without
    one), measured on ``model`` before the first step; the main process prints one line
    of what it chose. Under ``torchrun`` every process takes the largest choice."""
    if cfg.train.memory_budget == NO_BUDGET:
        return cfg
    if cfg.train.grad_accum != 1:
        raise ValueError(
            "give grad_accum or memory_budget, not both: the budget chooses grad_accum"
        )
    budget = budget_bytes(cfg.train.memory_budget, place.device)
    probes = probe_bytes(cfg, model, splits, place.device)
    state = state_bytes(model, ema)
    per_process = cfg.train.batch_size // place.world_size
    k = micro_batches_to_fit(budget, state, *probes, per_process)
    if place.enabled:
        chosen = torch.tensor([k], device=place.device)
        dist.all_reduce(chosen, op=dist.ReduceOp.MAX)
        k = int(chosen.item())
    if place.is_main:
        size = per_process // k
        print(
            f"memory budget {budget / GIB:.2f} GiB: {k} micro-batch{'es' * (k > 1)} of {size} "
            f"per step and process, planned at {planned_bytes(state, *probes, size) / GIB:.2f}"
            f" GiB (state {state / GIB:.2f} GiB, {(probes[1] - probes[0]) / 2**20:.1f} MiB "
            "per example)",
            flush=True,
        )
    return replace(cfg, train=replace(cfg.train, grad_accum=k))
