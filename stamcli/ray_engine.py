"""``--engine ray``: the local engine's records, computed on a Ray cluster with Ray Data.

One Ray Data dataset per run, streamed (what runs on the cluster is in :mod:`stamcli.ray_tasks`)::

    ray.data.range(tasks): decode task i takes its share of the videos still to do, from a path
                           table put in the object store once (at most MAX_DECODE_TASKS tasks)
      -> decode: CPU tasks, the local engine's reading code (one row per video, or per timeline
         window: its uint8 frames, or why the video cannot be read; never a failed task)
      -> model: a pool of actors, one model each (one GPU each on GPU nodes), the local
         engine's Predictor computing the same thing (class probabilities, or embeddings)
      -> the driver, in input order, where the local engine's code turns the outputs into
         records and the local engine's writers write them.

:class:`RayPredictor` is a :class:`~stamcli.engine.Predictor` whose :meth:`~RayPredictor.compute_batches`
runs that pipeline, so ``scores``, ``predict``, ``record`` and the result sources of ``stam predict``
and ``stam embed`` (:class:`stamcli.tagging.PredictorSource`, :class:`stamcli.embedding.EmbeddingSource`)
work unchanged; :class:`RayTimelinePredictor` does the same for timelines (``--window``).
:func:`stamcli.engine.make_predictor` picks it for ``PredictOptions(engine="ray")``, whose
``resolve()`` checks what cannot run under Ray. The driver
sends paths and receives model outputs (a few KB per video); frames go from the decode tasks to
the actors through Ray's object store, node to node, never through the driver.

Fault tolerance is Ray Data's, with its defaults: a decode task whose worker dies (out of memory,
node lost, SIGKILL) is run again, and a model actor that dies is restarted (its model is in the
object store) and its batch run again, so every video comes out exactly once. Errors raised by
stamcli's own code are not retried: a video that cannot be read is an error record, not a failed
task.

Where Ray runs: ``--ray-address``, else Ray's own ``RAY_ADDRESS``, else a local Ray started for
the run and stopped after it. Every node needs this version of stamcli installed. Videos in
object storage (``s3://...``) are fetched by the decode task that reads them
(:meth:`stamcli.decode.ClipSpec.read`), on its node, with that node's credentials.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from .decode import Clip
from .engine import Predictor, VideoItem, error_reason
from .errors import StamError, require_extra
from .jobs import PredictOptions
from .parallel import MAX_STREAMS
from .ray_tasks import OUTPUTS, ModelActor, decode, decode_task, frames_shape, path_table, read_video, read_windows
from .timeline import ShotWindows, TimelinePredictor, Window, _Item

if TYPE_CHECKING:
    from .model import STAM

__all__ = ["require_ray", "ray_session", "RayPredictor", "RayTimelinePredictor", "MAX_DECODE_TASKS"]

#: Most decode tasks per run: 100,000 videos in batches of 8 go 104 to a task.
MAX_DECODE_TASKS = 1000


def require_ray():
    """The ``ray`` module (with Ray Data), or a one-line error naming the install command."""
    ray = require_extra("ray", "ray", "--engine ray")
    require_extra("ray.data", "ray", "--engine ray")
    return ray


# --------------------------------------------------------------------------- Ray itself


@contextmanager
def ray_session(address: Optional[str] = None) -> Iterator[None]:
    """Connect to the cluster at ``address`` (None: ``RAY_ADDRESS``, else start a local Ray) for the
    ``with`` block; a Ray the caller already started is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO  # --verbose: Ray's warnings too
    try:
        ray.init(address=address, logging_level=logging.WARNING if verbose else logging.ERROR, log_to_driver=verbose,
                 **({"include_dashboard": False} if address == "local" else {}))
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = "start a local Ray" if address == "local" else f"connect to the Ray cluster at {address}"
        raise StamError(f"cannot {where}: {error_reason(err)}") from None
    try:
        # A failed run ends in one StamError line; Ray Data's own report of it comes with --verbose.
        logging.getLogger("ray.data").setLevel(logging.WARNING if verbose else logging.CRITICAL)
        yield
    finally:
        ray.shutdown()


def _data_context(block_bytes: int):
    """A copy of Ray Data's settings for one run: records in input order (the local engine's, so
    the same files), a block per ``block_bytes`` of decoded frames (each model batch goes on as
    soon as it is decoded), no progress bars (stamcli shows its own)."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    context = DataContext.get_current().copy()
    context.execution_options.preserve_order = True
    context.target_max_block_size = block_bytes
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    log_once("ray_data_progress_manager_disabled")  # Ray Data would warn that its bars are off
    return DataContext.current(context)


def _rows_per_task(count: int, unit: int) -> int:
    """Videos per decode task: a multiple of ``unit`` (the model batch), at most :data:`MAX_DECODE_TASKS`
    tasks (each task costs the driver some planning and bookkeeping)."""
    return unit * -(-count // (unit * MAX_DECODE_TASKS))


def _model_resources(ray, device: str, actors: Optional[tuple[int, int]]) -> dict:
    """The actor pool's ``map_batches`` arguments: how many, what each one reserves, its threads.

    GPU nodes (``--device auto`` or ``cuda`` on a cluster with GPUs): one GPU per actor, one actor
    per GPU by default. CPU: one actor per model stream of the local engine (``min(4, cores)``
    per node), each computing with ``cores / streams`` torch threads. A CPU actor reserves only
    half a logical CPU per thread (less on a one-core node, so a decode task can always run): the
    cores are shared with the decode tasks, as the local engine's model streams share them with
    its decode threads.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise StamError("--device cuda: the Ray cluster has no GPUs (use --device cpu or auto)")
    if gpus and device != "cpu":
        low, high = actors or (gpus, gpus)
        return {"compute": _actor_pool(ray, low, high), "num_gpus": 1, "threads": None}
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU", 0) > 0))
    cores = max(1, int(resources.get("CPU", 1)) // nodes)
    streams = min(MAX_STREAMS, cores)
    threads = max(1, cores // streams)
    low, high = actors or (streams * nodes, streams * nodes)
    reserved = min(threads / 2, (cores - 1) / streams)  # a whole CPU stays free for a decode task
    return {"compute": _actor_pool(ray, low, high), "num_cpus": reserved,
            "threads": threads}


def _actor_pool(ray, low: int, high: int):
    """``low`` to ``high`` model actors, each with the batch it computes and the next one queued:
    with more queued, an actor may run a later batch first, and the records (kept in input order)
    would wait for the earlier one."""
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=2)


def _stam_error(err: Exception) -> StamError:
    """A failed Ray Data run as one line, from the exception at the root of Ray's wrappers (a
    StamError raised on the cluster as itself)."""
    seen = [err]
    while (cause := getattr(seen[-1], "cause", None) or seen[-1].__cause__) is not None and cause not in seen:
        seen.append(cause)
    if isinstance(seen[-1], StamError):
        return seen[-1]
    return StamError(f"the Ray run failed: {error_reason(seen[-1])}")


# --------------------------------------------------------------------------- the driver


class RayPredictor(Predictor):
    """A :class:`Predictor` whose model runs in Ray actors and whose videos are decoded by Ray tasks.

    The driver's own copy of the model never runs: it is put in the object store once for the
    actors, and this object only turns their outputs into records (``record``, ``top_predictions``).
    ``options`` (``engine="ray"``, checked by :meth:`PredictOptions.resolve`) keep ``device`` and
    ``precision`` as given: each actor resolves them on its node.
    """

    def __init__(self, model: STAM, options: PredictOptions):
        options = options.resolve()
        if options.engine != "ray":
            raise ValueError(f"RayPredictor needs PredictOptions(engine='ray'), got {options.engine!r}")
        local = dict(engine="local", ray_address=None, ray_actors=None)
        # the driver's predictor: records only, on this machine's CPU
        super().__init__(model, replace(options, **local, device="cpu", precision="fp32", workers=1, streams=1))
        #: what each model actor's Predictor resolves on its node: it computes the model's outputs only (the
        #: label map and score floors are applied here, to the records)
        self.remote_options = replace(options, **local, label_map=None, min_score=None, thresholds=None)
        self.ray_address, self.actors = options.ray_address, options.actor_range
        self.spec = replace(self.clip_spec, threads=1)  #: how decode tasks read: one FFmpeg thread (a task holds a CPU)

    def compute_batches(self, paths: Iterable[str], compute: Callable[[list[Clip]], object]
                        ) -> Iterator[tuple[list[VideoItem], Optional[object]]]:
        """As :meth:`Predictor.compute_batches`, on Ray: each batch's videos with ``compute`` of its readable ones."""
        paths = list(paths)
        for batch, outputs in self.run(paths, compute.__name__, read_video, unit=self.options.batch_size):
            items = [VideoItem(paths[row], error=error) if error is not None else
                     VideoItem(paths[row], frame_count=int(count), fps=float(fps), duration_s=float(duration))
                     for row, error, count, fps, duration in
                     zip(batch["row"], map(decode, batch["error"]), batch["frame_count"], batch["fps"],
                         batch["duration_s"])]
            yield items, outputs

    def batches(self, paths):
        raise NotImplementedError("RayPredictor decodes on the cluster: use compute_batches(), scores() or predict()")

    def run(self, paths: list[str], compute: str, read: Callable[..., Iterator[dict]], *, unit: int
            ) -> Iterator[tuple[dict[str, np.ndarray], Optional[object]]]:
        """The pipeline over ``paths``, ``read`` giving each video's decode rows, decode tasks taking a
        multiple of ``unit`` videos. Yields each batch's columns (``row``, ``error``, ...) with
        ``compute``'s result for its rows that had frames (a tensor, or a tuple as ``compute`` returns;
        None if none had)."""
        if not paths:
            return
        batch_size = self.options.batch_size
        with ray_session(self.ray_address), _data_context(batch_size * int(np.prod(frames_shape(self.spec)))):
            import ray

            try:
                for batch in self._dataset(ray, paths, compute, read, unit).iter_batches(batch_size=None,
                                                                                          batch_format="numpy"):
                    ok = batch["has_frames"]
                    results = tuple(torch.from_numpy(np.ascontiguousarray(batch[name][ok])) for name in OUTPUTS[compute])
                    yield batch, (None if not ok.any() else results if len(results) > 1 else results[0])
            except ray.exceptions.RayError as err:
                raise _stam_error(err) from None

    def _dataset(self, ray, paths: list[str], compute: str, read, unit: int):
        """Task ``i`` of ``range(tasks)`` decodes its share of the path table, the actors compute."""
        resources = _model_resources(ray, self.remote_options.device, self.actors)
        threads = resources.pop("threads")
        per_task = _rows_per_task(len(paths), unit)
        tasks = -(-len(paths) // per_task)
        table, model = [ray.put(path_table(paths))], [ray.put(self.model)]  # see ray_tasks._fetched
        decode = {"paths": table, "per_task": per_task, "spec": self.spec, "read": read,
                  "chunk": self.options.batch_size, "folder": os.getcwd()}
        return (ray.data.range(tasks, override_num_blocks=tasks)
                .map_batches(decode_task, fn_kwargs=decode, batch_size=None, batch_format="numpy", num_cpus=1)
                .map_batches(ModelActor, fn_constructor_args=(model, self.remote_options, compute, threads),
                             batch_size=self.options.batch_size, batch_format="numpy", **resources))


class _ReaderFacts:
    """What :meth:`TimelinePredictor._summary` reads of a finished :class:`TimelineReader`."""

    def __init__(self, frame_count: int, fps: float, shot_count: Optional[int] = None):
        self.frame_count, self.fps, self.shot_count = frame_count, fps, shot_count

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


class RayTimelinePredictor(TimelinePredictor):
    """Timelines on Ray: a decode task per video yields its windows; the driver builds the same
    window and video records as :class:`TimelinePredictor` from the actors' probabilities."""

    def __init__(self, predictor: RayPredictor, window_s: Optional[float], stride_s: Optional[float] = None, *,
                 shots: Optional[ShotWindows] = None):
        super().__init__(predictor, window_s, stride_s, shots=shots)

    def predict(self, paths: Iterable[str]) -> Iterator[dict]:
        paths = list(paths)
        predictor: RayPredictor = self.predictor
        read = partial(read_windows, window_s=self.window_s, stride_s=self.stride_s, shots=self.shots)
        for batch, probabilities in predictor.run(paths, "probabilities", read, unit=1):
            items = []
            for row, error, ends, window, start, end, count, fps, shot, shots in zip(
                    batch["row"], map(decode, batch["error"]), batch["ends"], batch["window"], batch["start"],
                    batch["end"], batch["frame_count"], batch["fps"], batch["shot"], batch["shots"]):
                # a window, the video's end (its error, or its facts), or its last window and its end
                items.append(_Item(paths[row], error=error,
                                   window=Window(int(window), int(start), int(end), float(fps),
                                                 None if shot < 0 else int(shot)) if window >= 0 else None,
                                   reader=_ReaderFacts(int(count), float(fps), None if shots < 0 else int(shots))
                                   if ends and error is None else None))
            yield from self._records(items, probabilities)
