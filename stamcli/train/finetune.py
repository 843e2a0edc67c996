"""``stam finetune``: train STAM on a user's labelled clips, resumably, on one process or many.

The loop is deliberately plain: AdamW, linear warm-up then cosine decay per optimiser step, label
smoothing, gradient accumulation, autocast. What makes it dependable:

* **Exact resume.** Sample order comes from ``(seed, epoch)`` and each sample's augmentation from
  ``(seed, epoch, index)``; the model, optimiser, scheduler, fp16 loss scale, position in the epoch
  and the torch RNGs (CPU, and the GPU's) are saved together, so ``--resume`` continues with the
  very batches and dropout masks the uninterrupted run would have used.
* **fp16 with loss scaling.** ``--precision fp16`` scales the loss (:class:`torch.amp.GradScaler`)
  so that small gradients do not underflow, and skips a step whose gradients overflowed instead of
  turning the weights into NaN. bf16 has fp32's range and needs no scaling.
* **Ctrl-C is a request.** The first Ctrl-C finishes the current optimiser step, saves ``last`` and
  exits; a second one stops at once.
* **One code path for torchrun.** Each rank runs on its own GPU (:mod:`stamcli.distributed`), takes
  every N-th sample, DDP averages gradients, metrics are summed across ranks, and only rank 0 writes.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from ..allocator import keep_freed_memory
from ..checkpoints import load_checkpoint, save_checkpoint
from ..decode import resolve_decoder
from ..device import autocast_for, resolve_device, resolve_precision
from ..distributed import Distributed
from ..errors import StamError, UsageError
from ..fileutils import atomic_path
from ..jobs import PredictOptions
from ..model import STAM
from .config import FinetuneConfig, load_run_config, new_run_dir, save_config
from .data import ClipDataset, class_names, read_examples, stratified_split, validate
from .embeddings import cached_embeddings
from .evaluate import evaluate_examples
from .metrics import MetricsLog
from .modelling import build_model
from .parts import TrainedPart, legacy_param_groups, load_parts, param_groups, plan_parts, save_parts

log = logging.getLogger(__name__)

STATE_FILE = "last_state.pt"


class EpochSampler(Sampler[int]):
    """A shuffled order fixed by ``(seed, epoch)``; rank ``r`` of ``W`` takes every W-th sample;
    ``skip`` drops this rank's first samples (resuming mid-epoch)."""

    def __init__(self, size: int, seed: int, *, shuffle: bool, rank: int = 0, world: int = 1, pad: bool = True):
        self.size, self.seed, self.shuffle, self.rank, self.world, self.pad = size, seed, shuffle, rank, world, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _mine(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world > 1 and self.size % self.world:  # every rank takes as many steps
            order += order[: self.world - self.size % self.world]
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._mine()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self._mine()) - self.skip)


@dataclass
class FinetuneResult:
    run_dir: Path
    epochs_done: int
    best_epoch: Optional[int]
    best_top1: Optional[float]
    stopped_early: bool
    interrupted: bool


class TemporalHead(torch.nn.Module):
    """The trainable part with a frozen backbone: cached frame embeddings -> logits."""

    def __init__(self, model: STAM):
        super().__init__()
        self.temporal, self.head = model.temporal, model.head

    def forward(self, frame_embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(self.temporal(frame_embeddings))


class _StopRequest:
    """First Ctrl-C: stop after the current step (and save); second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopRequest":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step and saving 'last' (press Ctrl-C again to stop at once)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def rng_state(device: torch.device) -> dict:
    """The torch RNG states a resumed run needs: the CPU's, and ``device``'s when it is a GPU.

    Under torchrun rank 0's states are saved and every rank gets them back: the ranks start from
    one seed and draw alike (same model, same batch shapes), so their states are the same.
    """
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Set the RNG states :func:`rng_state` saved (a GPU state on ``device``)."""
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _all_reduce(values: list[float], dist: Distributed, device: torch.device) -> list[float]:
    if not dist.active:
        return values
    import torch.distributed as tdist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(tensor)
    return tensor.tolist()


class _Run:
    """One fine-tuning run (fresh or resumed); see :func:`finetune`. ``parts``: what trains at
    which rate (:mod:`stamcli.train.parts`)."""

    def __init__(self, config: FinetuneConfig, run_dir: Path, model: STAM, train, val, dist: Distributed,
                 parts: list[TrainedPart], decoder: str):
        self.config, self.run_dir, self.dist, self.parts = config, run_dir, dist, parts
        self.decoder = decoder  #: the resolved decoder choice (auto, pyav or opencv)
        self.device = resolve_device(dist.device_for(config.device))
        self.precision = resolve_precision(config.precision, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.labels = list(model.labels)
        index = {label: i for i, label in enumerate(self.labels)}
        self.val_examples = val
        frames, size = model.config.frames, model.config.img_size
        if config.freeze_backbone:
            self.model.spatial.requires_grad_(False)
            self.train_set, self.val_set = cached_embeddings(
                self.model, train, val, index, run_dir / "cache", device=self.device,
                precision=self.precision, batch_size=config.batch_size, workers=config.workers, dist=dist,
                decoder=self.decoder,
            )
            self.trainable = TemporalHead(self.model)
        else:
            self.train_set = ClipDataset(train, index, frames, size, train=True, seed=config.seed, hflip=config.hflip,
                                         decoder=self.decoder)
            self.val_set = ClipDataset(val, index, frames, size, train=False, decoder=self.decoder)
            self.trainable = self.model
        self.train_sampler = EpochSampler(len(self.train_set), config.seed, shuffle=True,
                                          rank=dist.rank, world=dist.world)
        self.val_sampler = EpochSampler(len(self.val_set), config.seed, shuffle=False,
                                        rank=dist.rank, world=dist.world, pad=False)
        self.network = self._wrap()
        batches = math.ceil(len(self.train_sampler) / config.batch_size)
        self.steps_per_epoch = math.ceil(batches / config.grad_accum)
        self._set_optimizer(param_groups(self.model, parts, config.weight_decay))
        self.metrics = MetricsLog(run_dir / "metrics.csv") if dist.is_main else None
        self.epoch, self.batches_done, self.best, self.bad_epochs = 0, 0, None, 0
        self.epoch_loss = [0.0, 0]  # training loss sum and sample count so far in this epoch
        self.stop = _StopRequest()

    def _set_optimizer(self, groups: list[dict]) -> None:
        """AdamW over ``groups``; linear warm-up then cosine decay, per optimiser step."""
        self.optimizer = torch.optim.AdamW(groups, lr=self.config.lr)
        total = self.steps_per_epoch * self.config.epochs
        warmup = min(total, round(self.config.warmup * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(warmup, total))

    def base_lr(self) -> float:
        """The current rate of ``--lr`` (parts from trained weights; scratch parts train at a multiple)."""
        return self.config.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    def request_stop(self) -> None:
        """End the run after the current optimiser step, as Ctrl-C does (``last`` is saved)."""
        self.stop.requested = True

    def _wrap(self) -> torch.nn.Module:
        if not self.dist.active:
            return self.trainable
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(self.trainable, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.config.freeze_backbone:  # inputs are cached frame embeddings
            return self.network(inputs.float())
        return self.network(inputs.float().div_(255.0))

    def _loader(self, dataset, sampler) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed)  # keeps the global RNG untouched
        workers = 0 if self.config.freeze_backbone else self.config.workers
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, num_workers=workers,
                          generator=generator, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        """``last.safetensors`` + the optimiser/scheduler/RNG/position state beside it (rank 0)."""
        if not self.dist.is_main:
            return
        save_checkpoint(self.model, self.run_dir / "last.safetensors", provenance=self._provenance())
        state = {
            "epoch": self.epoch, "batches_done": self.batches_done, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            **rng_state(self.device), "best": self.best, "bad_epochs": self.bad_epochs, "epoch_loss": self.epoch_loss,
        }
        with atomic_path(self.run_dir / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def restore(self) -> None:
        state = torch.load(self.run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        if any("part" not in group for group in state["optimizer"]["param_groups"]):
            # saved by a stamcli without per-part rates: continue as it was started, one rate for all
            self._set_optimizer(legacy_param_groups(self.trainable, self.config.weight_decay))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty unless fp16
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state, self.device)
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.best, self.bad_epochs, self.epoch_loss = state["best"], state["bad_epochs"], state["epoch_loss"]
        if self.metrics:  # rows are numbered from 1: keep those of the completed epochs
            self.metrics.truncate_after(self.epoch)

    def _provenance(self) -> dict:
        return {"base_model": self.config.model, "data": self.config.data, "val": self.config.val,
                "epochs_done": self.epoch, "best": self.best, "config": self.config.to_dict()}

    # ------------------------------------------------------------------ loop

    def train_epoch(self, on_step: Optional[Callable]) -> tuple[float, bool]:
        """One epoch from ``self.batches_done`` on; (mean training loss, stopped on request)."""
        cfg = self.config
        self.network.train()
        start = self.batches_done
        self.train_sampler.set_epoch(self.epoch, skip=start * cfg.batch_size)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        loader = self._loader(self.train_set, self.train_sampler)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets) in enumerate(loader, start=1):
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device)
            with autocast_for(self.device, self.precision):
                logits = self._forward(inputs)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
            self.scaler.scale(loss / cfg.grad_accum).backward()  # fp16: scaled, so gradients do not underflow
            self.epoch_loss[0] += loss.item() * len(targets)
            self.epoch_loss[1] += len(targets)
            if i % cfg.grad_accum and i < len(loader):
                continue
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
                torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)  # fp16: skipped when a gradient overflowed to inf/NaN
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.batches_done = start + i
            if on_step:
                on_step(self)
            if self._stop_agreed():
                return self.epoch_loss[0] / max(self.epoch_loss[1], 1), True
        loss_sum, count = _all_reduce(self.epoch_loss, self.dist, self.device)
        self.batches_done, self.epoch_loss = 0, [0.0, 0]
        return loss_sum / max(count, 1), False

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: all ranks must stop after the same step, or the
        others would wait forever in the next gradient all-reduce."""
        if not self.dist.active:
            return self.stop.requested
        return _all_reduce([float(self.stop.requested)], self.dist, self.device)[0] > 0

    @torch.inference_mode()
    def validate(self) -> tuple[float, float, float]:
        """(loss, top-1, top-5) on the validation set, summed across ranks."""
        self.network.eval()
        loss = top1 = top5 = count = 0.0
        for inputs, targets in self._loader(self.val_set, self.val_sampler):
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with autocast_for(self.device, self.precision):
                logits = self._forward(inputs).float()
            loss += F.cross_entropy(logits, targets, reduction="sum").item()
            ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            top1 += (ranked[:, 0] == targets).sum().item()
            top5 += (ranked == targets[:, None]).any(dim=-1).sum().item()
            count += len(targets)
        loss, top1, top5, count = _all_reduce([loss, top1, top5, count], self.dist, self.device)
        count = max(count, 1)
        return loss / count, top1 / count, top5 / count


def _prepare_data(config: FinetuneConfig, decoder: str, labels: Optional[list[str]] = None):
    """Training and validation examples, checked all at once before any training starts."""
    train = read_examples(config.data)
    frames = config.frames or 8
    if config.val:
        train, val = validate(train, read_examples(config.val), skip_bad=config.skip_bad, frames=frames,
                              decoder=decoder)
    else:
        train = validate(train, skip_bad=config.skip_bad, frames=frames, split=config.val_split > 0, decoder=decoder)
        train, val = stratified_split(train, config.val_split, config.seed)
    if not train:
        raise StamError(f"no usable training examples in {config.data}")
    return train, val, labels or class_names(train + val)


def _epoch_report(run: _Run, epoch_s: float, train_loss: float) -> dict:
    val_loss, top1, top5 = run.validate() if run.val_examples else (float("nan"),) * 3
    return {"epoch": run.epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_top1": top1,
            "val_top5": top5, "lr": run.base_lr(), "seconds": epoch_s}


def _improved(best: Optional[dict], row: dict) -> bool:
    if best is None:
        return True
    if math.isnan(row["val_top1"]):  # no validation set: the latest model is the best
        return True
    return (row["val_top1"], -row["val_loss"]) > (best["val_top1"], -best["val_loss"])


def _final_report(run: _Run) -> None:
    """Rank 0: evaluate ``best`` on the whole validation set and write the report beside it."""
    if not run.val_examples or not run.dist.is_main:
        return
    options = PredictOptions(device=str(run.device), precision=run.precision, batch_size=run.config.batch_size,
                             workers=max(1, run.config.workers), decoder=run.decoder)
    evaluate_examples(run.val_examples, load_checkpoint(run.run_dir / "best.safetensors"), options,
                      output=run.run_dir / "val_report.json", source=run.config.val or run.config.data)


def finetune(
    config: Optional[FinetuneConfig] = None,
    *,
    resume: Optional[str | Path] = None,
    on_start: Optional[Callable[[list[TrainedPart]], None]] = None,
    on_step: Optional[Callable[[_Run], None]] = None,
    on_epoch: Optional[Callable[[dict], None]] = None,
) -> FinetuneResult:
    """Fine-tune (or with ``resume=RUN_DIR``, continue fine-tuning). See ``stam finetune --help``.

    ``on_start(parts)`` is called once before training with what trains at which rate
    (:class:`~stamcli.train.parts.TrainedPart`); ``on_step(run)`` after every
    optimiser step (``run.request_stop()`` ends the run as Ctrl-C does); ``on_epoch(row)`` after
    every epoch with its metrics.
    """
    dist = Distributed.from_env()
    if resume:
        config = load_run_config(resume)
    elif config is None:
        raise UsageError("finetune() needs a FinetuneConfig, or resume=RUN_DIR")
    else:
        config.check()
    decoder = resolve_decoder(config.decoder)  # once: data checks, training and the final report read alike
    if dist.active:  # NCCL between GPUs (each rank on its own), gloo between CPU processes
        device = resolve_device(dist.device_for(config.device))
        dist.init(device, backend="nccl" if device.type == "cuda" else "gloo")
    if resume:
        run_dir = Path(resume)
        model = load_checkpoint(run_dir / "last.safetensors")
        train, val, labels = _prepare_data(config, decoder, model.labels)
        parts = load_parts(run_dir)
        if parts is None:
            log.warning("%s was started by an earlier stamcli, without per-part learning rates: it "
                        "continues with one learning rate (--lr) for every part", run_dir)
            parts = plan_parts(model, None, lr=config.lr, scratch_lr_scale=1.0,
                               freeze_backbone=config.freeze_backbone)
    else:
        train, val, labels = _prepare_data(config, decoder)
        torch.manual_seed(config.seed)  # a new head's initial weights come from the seed too
        start = build_model(config, labels)
        model = start.model
        parts = plan_parts(model, start.scratch, lr=config.lr, scratch_lr_scale=config.scratch_lr_scale,
                           freeze_backbone=config.freeze_backbone)
        if dist.active:  # every rank must agree on the folder: rank 0 picks it
            run_dir = _shared_run_dir(config, dist)
        else:
            run_dir = new_run_dir(config)
        if dist.is_main:
            save_config(config, run_dir)
            save_parts(parts, run_dir, scratch_lr_scale=config.scratch_lr_scale)
    if on_start and dist.is_main:
        on_start(parts)
    torch.manual_seed(config.seed)  # dropout; a resumed run restores the saved RNG state below
    run = _Run(config, run_dir, model, train, val, dist, parts, decoder)
    if resume:
        run.restore()
    stopped_early = False
    with run.stop:
        while run.epoch < config.epochs and not stopped_early:
            started = time.perf_counter()
            train_loss, interrupted = run.train_epoch(on_step)
            if interrupted:
                run.save()
                return FinetuneResult(run_dir, run.epoch, _best_epoch(run), _best_top1(run), False, True)
            row = _epoch_report(run, time.perf_counter() - started, train_loss)
            run.epoch += 1
            if _improved(run.best, row):
                run.best, run.bad_epochs = row, 0
                if dist.is_main:
                    save_checkpoint(run.model, run_dir / "best.safetensors", provenance=run._provenance())
            else:
                run.bad_epochs += 1
                stopped_early = bool(config.patience) and run.bad_epochs >= config.patience
            run.save()
            if run.metrics:
                run.metrics.append(row)
                last = stopped_early or run.epoch >= config.epochs
                run.metrics.plot_if_due(run_dir / "training_curves.png", final=last)  # the last epoch always
            if on_epoch:
                on_epoch(row)
    dist.barrier()
    _final_report(run)
    return FinetuneResult(run_dir, run.epoch, _best_epoch(run), _best_top1(run), stopped_early, False)


def _best_epoch(run: _Run) -> Optional[int]:
    return run.best["epoch"] if run.best else None


def _best_top1(run: _Run) -> Optional[float]:
    return run.best["val_top1"] if run.best else None


def _shared_run_dir(config: FinetuneConfig, dist: Distributed) -> Path:
    import torch.distributed as tdist

    dist.init()
    chosen = [str(new_run_dir(config)) if dist.is_main else None]
    tdist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])
