"""This process's place in a ``torchrun`` launch (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``).

``stam predict`` and ``stam finetune`` both run unchanged under ``torchrun --nproc-per-node N``:
each rank takes its share of the work and rank 0 writes the results.

**One GPU per rank.** :meth:`Distributed.device_for` gives rank ``LOCAL_RANK`` of a node its own
GPU (``cuda:LOCAL_RANK``, or ``cuda:0`` where each rank sees only its own GPU, as under SLURM
with one GPU per task), and :meth:`Distributed.init` makes that GPU the current device before
joining the group, with the NCCL group bound to it: otherwise every rank's collectives, and the
CUDA context that pinned memory creates, land on ``cuda:0``.

**Two kinds of waiting.** Collectives in lockstep (the gradient all-reduce, summed metrics) keep
torch's timeouts (NCCL 10 minutes, gloo 30). :meth:`Distributed.barrier` is for ranks that are
done with their part and wait for the others, who may need hours more (a frozen-backbone cache,
``predict`` shards of long videos): it waits on a gloo group of its own with a timeout of
:data:`WAIT_TIMEOUT`. A rank that fails does not leave the others waiting that long: torchrun
stops every rank of a job when one of them exits with an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from .errors import StamError

__all__ = ["Distributed", "WAIT_TIMEOUT"]

#: How long :meth:`Distributed.barrier` waits for the other ranks.
WAIT_TIMEOUT = timedelta(days=7)
#: Timeout of the main process group's collectives (None: torch's default); tests shorten it.
COLLECTIVE_TIMEOUT: Optional[timedelta] = None

_wait_group = None  # the gloo group of barrier(), made by init()


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  #: ranks on this machine (``LOCAL_WORLD_SIZE``): they share its CPU cores

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device=None, backend: str = "gloo") -> None:
        """Join the process group; a no-op outside torchrun.

        ``device`` (a :class:`torch.device`): this rank's device; a CUDA device becomes the current
        one. ``backend="nccl"`` (collectives on GPU tensors) needs it and binds the group to it.
        """
        global _wait_group
        if not self.active:
            return
        import torch
        import torch.distributed as tdist

        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            if backend == "nccl":
                if device is None or device.type != "cuda":
                    raise ValueError("the NCCL group needs this rank's CUDA device")
                tdist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
            else:
                tdist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        if _wait_group is None:
            _wait_group = tdist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)

    def barrier(self) -> None:
        """Wait until every rank gets here, however long the others take (up to :data:`WAIT_TIMEOUT`)."""
        if not self.active:
            return
        import torch.distributed as tdist

        self.init()
        tdist.barrier(group=_wait_group)

    def device_for(self, spec: str) -> str:
        """``auto``/``cuda`` under torchrun on a GPU machine -> this rank's GPU: ``cuda:<LOCAL_RANK>``,
        or ``cuda:0`` when the rank sees a single GPU (one GPU per rank, e.g. SLURM's
        ``--gpus-per-task=1``). Any other ``spec`` is returned as it is."""
        if not self.active or spec not in ("auto", "cuda"):
            return spec
        import torch

        if not torch.cuda.is_available():
            return spec
        visible = torch.cuda.device_count()
        if self.local_rank < visible:
            return f"cuda:{self.local_rank}"
        if visible == 1:
            return "cuda:0"
        raise StamError(
            f"this process is local rank {self.local_rank}, but only {visible} CUDA devices are visible: "
            f"start at most {visible} processes per machine (torchrun --nproc-per-node {visible}) "
            "or give each process its own GPU (CUDA_VISIBLE_DEVICES)"
        )
