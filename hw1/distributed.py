"""Data-parallel training on PyTorch's own engine: torchrun starts the processes, DDP syncs gradients.

    torchrun --standalone --nproc_per_node=4 train_cls.py --model densenet

One process per device; torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. A plain
``python train_cls.py`` is a world of one, and every function here is then a no-op, so the
single-process path is the same code with nothing added.
"""
import logging
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from hw1.errors import UserError
from hw1.runtime import get_device

log = logging.getLogger(__name__)


def launched():
    """True in a process that torchrun started with more than one process in the world."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def setup(device_name="auto"):
    """Join torchrun's process group (nccl on GPUs, gloo on the CPU); return this process's device.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` on its node.
    """
    device = get_device(device_name)
    if not launched():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank}: this node has only {torch.cuda.device_count()} GPUs; "
                            "give torchrun --nproc_per_node at most that many")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return device


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writing demo data); the others run it after, finding it done."""
    if dist.is_initialized() and not is_main():
        dist.barrier()
    yield
    if dist.is_initialized() and is_main():
        dist.barrier()


def sum_(tensor):
    """All-reduce ``tensor`` by sum in place (a no-op in one process) and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(model):
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP broadcasts them at the start of each training forward, but the forward then updates each
    rank's copy from its own batch, so after the last step they differ. Evaluating and saving with
    rank 0's makes the distributed evaluation that of the checkpoint rank 0 writes.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather(obj):
    """Every rank's ``obj`` as a list in rank order (``[obj]`` in one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...``: every sample on exactly one rank, none padded or repeated.

    DistributedSampler pads the shards to equal length with repeated samples, which would count
    those twice in a validation metric; evaluation does not need equal shards because its results
    are summed, not synchronised per step.
    """

    def __init__(self, length, rank, world_size):
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
