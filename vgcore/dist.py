"""Distributed set-up from the environment, rank helpers, per-rank seeds and samplers.

One code path for the three ways a script is started:

* plain ``python train.py ...``                                   -> single process, no process group;
* ``python -m torch.distributed.launch --nproc_per_node=N --use_env train.py ...`` (the form every official
  TransVG-family README uses) and ``torchrun --nproc_per_node=N train.py ...``  -> RANK / WORLD_SIZE /
  LOCAL_RANK / MASTER_ADDR / MASTER_PORT are in the environment;
* the legacy launcher without ``--use_env`` appends ``--local-rank=<n>`` to argv; it sets the same
  environment variables too, so `init_distributed` still reads the environment (cli.py merely accepts the
  flag so argparse does not fail).

Backend: CUDA -> nccl (and ``torch.cuda.set_device(local_rank)``), CPU -> gloo.  Nothing here calls
``torch.cuda.*`` when CUDA is unavailable, so the CPU/gloo test path is the same code as the GPU one.

Samplers
--------
`TrainSampler` is a seeded, resumable replacement for ``DistributedSampler``/``RandomSampler``: the order of
epoch ``e`` depends only on ``(seed, e)`` (its own ``torch.Generator``; it never touches the global RNG), and
``set_epoch(e, start_index=k)`` skips the first ``k`` indices of this rank's shard, which is how a run resumes
exactly mid-epoch without loading (and without consuming RNG for) the batches already done.

`ShardedEvalSampler` gives rank ``r`` the indices ``r, r + W, r + 2W, ...``: every sample is evaluated exactly
once across ranks, with no padding or duplicates (``DistributedSampler`` pads to a multiple of W, which biases
metrics).  Shards may differ in length by one; evaluation does no collective op inside the loop, so that is
safe.
"""
from __future__ import annotations

import datetime
import gc
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as tdist

__all__ = [
    "DistInfo", "init_distributed", "destroy", "get_info", "is_dist", "get_rank", "get_world_size",
    "is_main_process", "barrier", "all_reduce_sum", "all_reduce_mean", "all_gather_object", "broadcast",
    "broadcast_object", "seed_everything", "TrainSampler", "ShardedEvalSampler", "build_sampler",
    "build_eval_sampler", "build_loader", "mute_stdout", "unwrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO: Optional[DistInfo] = None


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return default if v in (None, "") else int(v)


def init_distributed(backend: Optional[str] = None, device: Optional[str] = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Initialise from the environment and return a `DistInfo` (also remembered for the helpers below).

    ``backend``: None picks nccl when CUDA is available (and ``device`` is not "cpu"), gloo otherwise.
    ``device``: None -> ``cuda:<local_rank>`` if CUDA is available else ``cpu``; "cpu" forces CPU.
    Idempotent: a second call returns the existing info.
    """
    global _INFO
    if _INFO is not None and (not _INFO.distributed or tdist.is_initialized()):
        return _INFO
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu" if device is None else device)
    if world > 1:
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and dev.type != "cuda":
            raise RuntimeError("init_distributed: backend 'nccl' needs CUDA; use --dist_backend gloo on CPU")
        if not tdist.is_initialized():
            kw = dict(backend=backend, init_method="env://", world_size=world, rank=rank,
                      timeout=datetime.timedelta(seconds=timeout_s))
            if backend == "nccl":
                kw["device_id"] = dev
            tdist.init_process_group(**kw)
        _INFO = DistInfo(rank, world, local_rank, dev, True, backend)
        mute_stdout(rank != 0)
    else:
        _INFO = DistInfo(0, 1, 0, dev, False, None)
    return _INFO


def destroy() -> None:
    """Tear down the process group (if any) and forget the info.

    All ranks meet at a barrier first, and objects still holding the group (a DistributedDataParallel
    reducer caught in a reference cycle, finished async work) are collected while the interpreter is fully
    alive: a gloo group torn down during interpreter finalisation, or while a peer is still mid-collective,
    can abort the process ("terminate called without an active exception") after training has finished.
    """
    global _INFO
    if tdist.is_available() and tdist.is_initialized():
        try:
            tdist.barrier()
        finally:
            gc.collect()
            tdist.destroy_process_group()
            gc.collect()
    _INFO = None
    mute_stdout(False)


def get_info() -> DistInfo:
    return _INFO if _INFO is not None else DistInfo()


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``t``."""
    if is_dist():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks; returns ``t`` (float tensors only)."""
    if is_dist():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        t.div_(get_world_size())
    return t


def all_gather_object(obj: Any) -> List[Any]:
    """List of ``obj`` from every rank, in rank order (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_dist():
        tdist.broadcast(t, src=src)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    lst = [obj]
    tdist.broadcast_object_list(lst, src=src)
    return lst[0]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                                                          torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --------------------------------------------------------------------------------------------- output
_REAL_STDOUT = None  # the process's stdout while `mute_stdout` has replaced it


def mute_stdout(mute: bool) -> None:
    """Point ``sys.stdout`` at the null device (``mute=True``) or back at the real stream (``False``).

    `init_distributed` mutes every rank but 0, so a multi-process run prints each message once; stderr
    (warnings, tracebacks) stays open on every rank.  Calling it twice with the same value is a no-op.
    """
    global _REAL_STDOUT
    if mute and _REAL_STDOUT is None:
        _REAL_STDOUT, sys.stdout = sys.stdout, open(os.devnull, "w")
    elif not mute and _REAL_STDOUT is not None:
        sys.stdout.close()
        sys.stdout, _REAL_STDOUT = _REAL_STDOUT, None


# --------------------------------------------------------------------------------------------- seeds
def seed_everything(seed: int, rank: Optional[int] = None, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed + rank`` and return it.

    ``rank`` None -> the current rank.  Per-rank seeds keep augmentation streams different across ranks
    (the TransVG family does ``seed + rank`` too).  ``deterministic`` also asks for deterministic kernels.
    """
    rank = get_rank() if rank is None else rank
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return s


# --------------------------------------------------------------------------------------------- samplers
class TrainSampler(torch.utils.data.Sampler):
    """Seeded, resumable, optionally distributed training sampler.

    Epoch ``e`` permutes ``range(n)`` with ``torch.Generator().manual_seed(seed + e)`` (identity when
    ``shuffle`` is False), then pads (by wrapping around, like ``DistributedSampler``) or truncates
    (``drop_last``) to a multiple of ``world_size`` and takes ``perm[rank::world_size]``.
    ``set_epoch(e, start_index=k)`` skips the first ``k`` of this rank's indices for that epoch only
    (k = batches already done * batch size when resuming mid-epoch).
    """

    def __init__(self, dataset_or_len, shuffle: bool = True, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, drop_last: bool = False):
        self.n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_index = 0
        if drop_last:
            self.num_samples = self.n // self.world_size
        else:
            self.num_samples = -(-self.n // self.world_size)

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def indices(self) -> List[int]:
        """This rank's full index list for the current epoch (before skipping)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        total = self.num_samples * self.world_size
        if total > self.n:
            reps = -(-total // max(self.n, 1))
            perm = perm.repeat(reps)
        perm = perm[:total]
        return perm[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_index:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_index": self.start_index, "seed": self.seed}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.start_index, self.seed = int(sd["epoch"]), int(sd["start_index"]), int(sd["seed"])


class ShardedEvalSampler(torch.utils.data.Sampler):
    """Rank ``r`` of ``W`` gets ``r, r+W, r+2W, ...`` -- each sample exactly once over all ranks."""

    def __init__(self, dataset_or_len, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def build_sampler(dataset, shuffle: bool = True, distributed: Optional[bool] = None, seed: int = 0,
                  drop_last: bool = False) -> TrainSampler:
    """Training sampler (see `TrainSampler`); ``distributed`` None -> whether a process group exists."""
    distributed = is_dist() if distributed is None else distributed
    if distributed:
        return TrainSampler(dataset, shuffle, seed, drop_last=drop_last)
    return TrainSampler(dataset, shuffle, seed, rank=0, world_size=1, drop_last=drop_last)


def build_eval_sampler(dataset, distributed: Optional[bool] = None) -> ShardedEvalSampler:
    distributed = is_dist() if distributed is None else distributed
    if distributed:
        return ShardedEvalSampler(dataset)
    return ShardedEvalSampler(dataset, rank=0, world_size=1)


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id; derive numpy / python from it as well.
    s = torch.initial_seed() % (2 ** 32)
    np.random.seed(s)
    random.seed(s)


class _EpochLoader(torch.utils.data.DataLoader):
    """DataLoader whose ``set_epoch(epoch, start_step)`` re-seeds both the sampler and the generator
    that draws the worker base seed, so an epoch's data (order and worker RNG) depends only on
    (seed, rank, epoch) and never consumes the global torch RNG."""

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch, start_index=start_step * self.batch_size)
        if self.generator is not None:
            self.generator.manual_seed(self._vg_seed * 1_000_003 + epoch * 1009 + get_rank())


def build_loader(dataset, batch_size: int, *, train: bool, seed: int = 0, num_workers: int = 0,
                 collate_fn=None, drop_last: Optional[bool] = None, distributed: Optional[bool] = None,
                 pin_memory: bool = False, shuffle: Optional[bool] = None, **kw) -> torch.utils.data.DataLoader:
    """A DataLoader wired for this codebase.

    train=True: `TrainSampler` (shuffle by default, drop_last by default) and ``loader.set_epoch(epoch,
    start_step)`` to call at the start of every epoch (the engine's ``start_step`` resume uses it).
    train=False: `ShardedEvalSampler`, no shuffle, no drop_last.
    Exact mid-epoch resume holds for ``num_workers=0``; with workers the sample order is still exact but a
    worker's augmentation RNG after the resume point differs from an uninterrupted run.
    """
    if train:
        sampler = build_sampler(dataset, shuffle=True if shuffle is None else shuffle, distributed=distributed,
                                seed=seed, drop_last=True if drop_last is None else drop_last)
        dl_drop_last = True if drop_last is None else drop_last
    else:
        sampler = build_eval_sampler(dataset, distributed=distributed)
        dl_drop_last = False
    g = torch.Generator()
    g.manual_seed(seed)
    opts = dict(num_workers=num_workers, collate_fn=collate_fn, drop_last=dl_drop_last, pin_memory=pin_memory,
                worker_init_fn=_worker_init if num_workers > 0 else None, generator=g)
    opts.update(kw)
    loader = _EpochLoader(dataset, batch_size=batch_size, sampler=sampler, **opts)
    loader._vg_seed = int(seed)
    return loader


def configure_cpu_threads(device, num_workers: int) -> int:
    """On the CPU, leave one core per DataLoader worker: intra-op threads = cores - workers (>= 1).

    Oversubscribing the cores (torch's default uses them all while the workers decode images) made a
    training step 5x slower on the 2-core reference machine.  An explicit ``OMP_NUM_THREADS`` (which
    ``torchrun`` / ``launch`` set to 1 per process) always wins.  Returns the thread count in use.
    """
    if torch.device(device).type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - int(num_workers)))
    return torch.get_num_threads()
