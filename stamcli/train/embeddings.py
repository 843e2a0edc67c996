"""Frame embeddings cached on disk for ``--freeze-backbone`` training.

With the spatial ViT frozen, a video's frame embeddings never change, so they are computed once
(prediction preprocessing, no augmentation) and stored in ``RUN_DIR/cache``; every epoch then runs
only the temporal transformer and the head. The cache is keyed by the backbone's weights, the
frames and input size, and the list of videos, so a changed setup never reuses stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..distributed import Distributed
from ..device import autocast_for
from ..fileutils import atomic_path
from ..model import STAM
from .data import ClipDataset, Example

log = logging.getLogger(__name__)


def _cache_key(model: STAM, examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([model.config.backbone, model.config.frames, model.config.img_size]).encode())
    for example in examples:
        digest.update(example.path.encode("utf-8", "surrogateescape") + b"\0")
    for name, tensor in model.spatial.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def _embed(model: STAM, dataset: ClipDataset, device, precision: str, batch_size: int, workers: int) -> torch.Tensor:
    model.eval()
    chunks = []
    for frames, _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        with autocast_for(device, precision):
            chunks.append(model.embed_frames(frames.to(device).float().div_(255.0)).float().cpu().half())
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.frames, model.config.embed_dim).half()


def _part_path(path: Path, dist: Distributed, rank: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank}-of-{dist.world}.pt")


def _save(tensor: torch.Tensor, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)


def _split(model, examples, index, cache_dir: Path, name: str, dist: Distributed, decoder: str,
           **run) -> TensorDataset:
    """The embeddings of ``examples``, computed once. Under torchrun each rank embeds every W-th
    video into a part file and rank 0 joins the parts: W times faster, and the ranks wait for each
    other with :meth:`Distributed.barrier`, whose timeout no cache is too slow for."""
    path = cache_dir / f"{name}-{_cache_key(model, examples)}.pt"
    if not path.exists():
        mine = examples[dist.rank :: dist.world]
        dataset = ClipDataset(mine, index, model.config.frames, model.config.img_size, train=False,
                              decoder=decoder)
        if dist.is_main:
            log.info("computing %s frame embeddings for %d videos (once)", name, len(examples))
        embeddings = _embed(model, dataset, **run)
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not dist.active:
            _save(embeddings, path)
        else:
            _save(embeddings, _part_path(path, dist, dist.rank))
            dist.barrier()  # every part is written
            if dist.is_main:
                parts = [_part_path(path, dist, rank) for rank in range(dist.world)]
                joined = torch.empty(len(examples), *embeddings.shape[1:], dtype=embeddings.dtype)
                for rank, part in enumerate(parts):
                    joined[rank :: dist.world] = torch.load(part, weights_only=True)
                _save(joined, path)
                for part in parts:
                    part.unlink()
    dist.barrier()
    embeddings = torch.load(path, weights_only=True)
    targets = torch.tensor([index[e.label] for e in examples], dtype=torch.long)
    return TensorDataset(embeddings, targets)


def cached_embeddings(model: STAM, train, val, index: dict[str, int], cache_dir: Path, *, device, precision: str,
                      batch_size: int, workers: int, dist: Distributed,
                      decoder: str = "auto") -> tuple[TensorDataset, TensorDataset]:
    """(train, val) datasets of ``(frame embeddings (F, D) float16, label index)``; the videos read
    with ``decoder`` (:mod:`stamcli.decode.decoders`)."""
    run = dict(device=device, precision=precision, batch_size=batch_size, workers=workers)
    return (_split(model, train, index, cache_dir, "train", dist, decoder, **run),
            _split(model, val, index, cache_dir, "val", dist, decoder, **run))
