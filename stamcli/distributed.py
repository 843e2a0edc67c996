"""This process's place in a ``torchrun`` launch (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``).

``stam predict`` and ``stam finetune`` both run unchanged under ``torchrun --nproc-per-node N``:
each rank takes its share of the work and rank 0 writes the results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, backend: str = "gloo") -> None:
        """Join the process group (NCCL for GPUs, gloo on CPUs); a no-op outside torchrun."""
        import torch.distributed as dist

        if self.active and not dist.is_initialized():
            dist.init_process_group(backend)

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.active:
            self.init()
            dist.barrier()

    def device_for(self, spec: str) -> str:
        """``auto``/``cuda`` under torchrun on a GPU machine -> ``cuda:<LOCAL_RANK>``."""
        if self.active and spec in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
        return spec
