"""Data-parallel helpers for runs launched with ``torchrun --nproc-per-node N``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; every rank then trains the same model on its own
shard of the data. Gradients are averaged with an explicit all-reduce before the optimizer
step, so every rank applies the same update: the binary optimizers are deterministic given
identical gradients, and PBop draws identically because its generator is seeded identically.
Without those variables everything here is a no-op and training is a single process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from benchbnn.core.errors import BenchbnnError

#: gradients are all-reduced in flat buckets of at most this many bytes (fewer, larger calls)
BUCKET_BYTES = 32 * 2**20


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when this module initialised the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BenchbnnError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device to train on: ``device`` if given, else CUDA when available, else CPU.

    Under torchrun a bare "cuda" means this rank's GPU (``cuda:LOCAL_RANK``).
    """
    if device is None or str(device) == "":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BenchbnnError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N or another torch device name"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchbnnError(
                f"device {device!r} was requested but CUDA is not available; use --device cpu"
            )
        index = resolved.index if resolved.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise BenchbnnError(
                f"device cuda:{index} does not exist ({torch.cuda.device_count()} GPUs visible)"
            )
        resolved = torch.device("cuda", index)
    return resolved


def world_from_env() -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (a single process without them)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise BenchbnnError(
            f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world_size}"
        )
    return World(rank, world_size, local_rank)


def init(world: World, device: torch.device) -> World:
    """Join the process group (gloo on CPU, nccl on CUDA) unless it already exists."""
    if not world.parallel:
        return world
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != world.world_size:
            raise BenchbnnError(
                f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE says "
                f"{world.world_size}"
            )
        return world
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.world_size)
    return World(world.rank, world.world_size, world.local_rank, owns_group=True)


def shutdown(world: World) -> None:
    """Leave the process group if :func:`init` created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if not buckets or size + nbytes > BUCKET_BYTES or buckets[-1][0].dtype != t.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return buckets


def average_(tensors: list[torch.Tensor], world: World) -> None:
    """Replace each tensor by its mean over all ranks, in place (one call per bucket)."""
    if not world.parallel or not tensors:
        return
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat.div_(world.world_size)
        offset = 0
        for t in bucket:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def average_gradients(params: list[nn.Parameter], world: World) -> None:
    """Average ``.grad`` over the ranks (a missing gradient counts as zeros)."""
    if not world.parallel:
        return
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    average_(grads, world)


def average_buffers(model: nn.Module, world: World) -> None:
    """Average floating-point buffers (batch-norm running statistics) so ranks evaluate alike."""
    average_([b for b in model.buffers() if b.is_floating_point()], world)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; returned for chaining)."""
    if world.parallel:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """``tensor`` maximised over the ranks (in place; returned for chaining)."""
    if world.parallel:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def checksum(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A float64 fingerprint of parameter values, sensitive to position as well as value."""
    total = torch.zeros((), dtype=torch.float64, device=params[0].device if params else "cpu")
    for i, p in enumerate(params):
        flat = p.detach().reshape(-1).double()
        ramp = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
        total += (flat * (1.0 + ramp.remainder(97) / 97.0)).sum() * (i + 1)
    return total


def check_in_sync(params: Sequence[torch.Tensor], world: World) -> bool:
    """True when every rank holds exactly the same values in ``params`` (a collective call)."""
    if not world.parallel:
        return True
    local = checksum(params).reshape(1)
    gathered = [torch.empty_like(local) for _ in range(world.world_size)]
    dist.all_gather(gathered, local)
    return all(bool(torch.equal(g, gathered[0])) for g in gathered)
