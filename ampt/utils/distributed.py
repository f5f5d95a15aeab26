"""Runs on many processes launched by ``torchrun``: process group, ranks, collectives, shards.

A process started by ``torchrun`` (or ``srun torchrun``) finds ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in its
environment; :func:`init_from_env` joins the process group (NCCL when the
run uses CUDA, gloo on CPU) and pins the process to ``cuda:LOCAL_RANK``.
Without those variables nothing is initialised and every helper here is the
identity of a one-process run: rank 0 of 1, no-op barriers and reductions,
a shard that is the whole loader.

Shards are made of whole batches, dealt round-robin (batch ``b`` goes to
rank ``b % world_size``): every batch holds exactly the images it holds in
a one-process run, so an attack seeded per batch (PGD's random start,
AutoAttack's internal seeding) computes the same adversarial images on any
number of processes, and integer counts add up to the one-process result.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedSetupError(ValueError):
    """A setting that cannot run on the launched number of processes (a one-line message)."""


# ---------------------------------------------------------------- process group
def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def init_from_env(use_cuda: bool = True) -> bool:
    """Join the process group ``torchrun`` described; False (and nothing done) without torchrun.

    Backend NCCL when ``use_cuda`` and a GPU is visible (the process uses
    ``cuda:LOCAL_RANK``), gloo otherwise. Calling it again is harmless.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    cuda = bool(use_cuda) and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    logger.debug("Joined the process group: rank %d of %d (%s)", rank(), world_size(), dist.get_backend())
    return True


def shutdown() -> None:
    """Leave the process group (end of a command)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0, the only process that writes logs, checkpoints, config.yaml and results.json."""
    return rank() == 0


def device(use_cuda: bool) -> torch.device:
    """``cuda:LOCAL_RANK`` in a distributed CUDA run, ``cuda`` or ``cpu`` otherwise."""
    if not (use_cuda and torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank()) if is_distributed() else torch.device("cuda")


def _comm_device() -> torch.device:
    """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------- reductions
def all_reduce_sum(values: Sequence[int]) -> List[int]:
    """Element-wise sum over ranks of integer counts (exact: int64)."""
    if not is_distributed():
        return [int(v) for v in values]
    tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over ranks (e.g. the wall time of a sharded evaluation)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks, in one collective.

    With every rank's loss a mean over an equal share of the global batch,
    the mean of the gradients is the gradient of the global batch's mean
    loss. A gradient that is None on every rank stays None (the optimizer
    skips that parameter as it would in one process); None on some ranks
    only counts as zeros there.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    comm = _comm_device()
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float().to(comm)
            for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=comm)
    buffer = torch.cat([*flat, present])
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    grads, present = buffer[:-len(params)], buffer[-len(params):]
    offset = 0
    for p, has_grad in zip(params, present.tolist()):
        n = p.numel()
        if has_grad > 0:
            mean = (grads[offset:offset + n] / world_size()).view_as(p).to(device=p.device, dtype=p.dtype)
            if p.grad is None:
                p.grad = mean
            else:
                p.grad.copy_(mean)
        offset += n


def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (identical starting prompts)."""
    if not is_distributed():
        return
    comm = _comm_device()
    for p in params:
        data = p.detach().to(comm)
        dist.broadcast(data, src=0)
        with torch.no_grad():
            p.copy_(data.to(p.device))


# ---------------------------------------------------------------- batches and shards
def per_device_batch(global_batch: int, per_device: bool) -> int:
    """The batch each process loads: the config's batch split across ranks, or kept per device."""
    n = world_size()
    if per_device or n == 1:
        return int(global_batch)
    if global_batch % n:
        raise DistributedSetupError(
            f"DATALOADER.TRAIN_X.BATCH_SIZE {global_batch} is not divisible by the {n} processes: "
            f"use a multiple of {n}, or DATALOADER.TRAIN_X.PER_DEVICE True to load {global_batch} per process"
        )
    return int(global_batch) // n


def global_batch(batch_size: int, per_device: bool) -> int:
    """The number of images one optimizer step averages over."""
    return int(batch_size) * world_size() if per_device else int(batch_size)


def shard_batch_indices(indices: Sequence[int], batch_size: int) -> List[int]:
    """This rank's part of ``indices``: whole batches of ``batch_size``, dealt round-robin.

    Chunking the result by ``batch_size`` gives back exactly those batches
    (only the last batch of all may be partial, and it is its rank's last).
    """
    n, r = world_size(), rank()
    if n == 1:
        return list(indices)
    batches = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    return [i for b in batches[r::n] for i in b]


def shard_loader(loader: DataLoader, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """A sequential loader over this rank's batches of ``indices`` (default: the whole dataset).

    One process: ``loader`` itself when no ``indices`` are given.
    """
    if indices is None:
        if world_size() == 1:
            return loader
        indices = range(len(loader.dataset))
    return DataLoader(
        Subset(loader.dataset, shard_batch_indices(list(indices), loader.batch_size)),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
    )


def shard_key() -> dict:
    """Extra key of this rank's resumable state: ``{}`` in one process, else ``{"shard": "r/N"}``."""
    return {} if world_size() == 1 else {"shard": f"{rank()}/{world_size()}"}


def set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    """``DistributedSampler.set_epoch``: a new, rank-consistent shuffle every epoch."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


# ---------------------------------------------------------------- seeds
def _hash_seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def rank_seed(seed: int) -> int:
    """The global-RNG seed of this rank: ``seed`` on rank 0, a different reproducible one elsewhere."""
    r = rank()
    return int(seed) if r == 0 else _hash_seed(seed, r) % (2 ** 32)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one training image's attack start: independent of how the batch is split."""
    return _hash_seed(seed, epoch, index)
