"""What ``--engine ray`` runs on the cluster: decode tasks and model actors (:mod:`stamcli.ray_engine`
plans the run and writes the records).

* A **decode task** takes a share of the run's path table (:func:`path_table`, one object in
  Ray's object store) and hands on, ``chunk`` rows at a time, a row per video (:func:`read_video`)
  or per timeline window (:func:`read_windows`): the uint8 frames the local engine would read
  (the same :class:`~stamcli.decode.ClipSpec` and :class:`~stamcli.timeline.TimelineReader`, URLs
  included), or why the video cannot be read. It never raises for a bad video.
* A **model actor** (:class:`ModelActor`) holds one model and the local engine's
  :class:`~stamcli.engine.Predictor`, on its GPU or CPU, and replaces each batch's frames by the
  model's outputs (:data:`OUTPUTS`), NaN for rows without frames.

Paths and error messages travel as UTF-8 bytes with ``surrogateescape``: file names need not be
valid UTF-8, Arrow strings must.
"""

from __future__ import annotations

import os
from collections import namedtuple
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .decode import ClipSpec
from .engine import Predictor, error_reason
from .jobs import PredictOptions
from .parallel import single_threaded_decode
from .timeline import ShotWindows, TimelineReader

#: What each Predictor computation returns per video, as the model actors' output columns.
OUTPUTS = {"probabilities": ("probabilities",), "embeddings": ("embedding", "frame_embeddings")}
_Frames = namedtuple("_Frames", "frames")  # what Predictor's model side reads of a Clip


# --------------------------------------------------------------------------- decode tasks


def frames_shape(spec: ClipSpec) -> tuple[int, ...]:
    """The uint8 frames of one video: ``(F, 3, S, S)``, views first when there are several."""
    views = (spec.views,) if spec.views > 1 else ()
    return (*views, spec.num_frames, 3, spec.img_size, spec.img_size)


def encode(text: Optional[str]) -> bytes:
    return b"" if text is None else text.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> Optional[str]:
    return data.decode("utf-8", "surrogateescape") if data else None


def path_table(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every path in two flat arrays (the UTF-8 bytes one after another, and where each starts):
    one object in Ray's object store that every decode task reads without copying it."""
    encoded = [encode(path) for path in paths]
    return np.frombuffer(b"".join(encoded), np.uint8), np.cumsum([0, *map(len, encoded)], dtype=np.int64)


def _work_in(folder: str) -> None:
    """Relative paths mean what they mean on the driver (and errors name them as it would): a
    decode task works in the driver's folder, where the node has it (a shared file system)."""
    try:
        os.chdir(folder)
    except OSError:
        pass


class _Rows:
    """Decode rows being collected into the columns of one output batch."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.columns = shape, {name: [] for name in
                                           ("row", "error", "has_frames", "frame_count", "fps", "duration_s",
                                            "window", "start", "end", "shot", "shots", "ends", "frames")}

    def add(self, row: int, *, error: Optional[str] = None, frames: Optional[torch.Tensor] = None,
            frame_count: int = 0, fps: float = 0.0, duration_s: float = 0.0, window: int = -1, start: int = 0,
            end: int = 0, shot: int = -1, shots: int = -1, ends: bool = False) -> None:
        values = dict(row=row, error=encode(error), has_frames=frames is not None, frame_count=frame_count,
                      fps=fps, duration_s=duration_s, window=window, start=start, end=end, shot=shot, shots=shots,
                      ends=ends,
                      frames=np.zeros(self.shape, np.uint8) if frames is None else frames.numpy())
        for name, value in values.items():
            self.columns[name].append(value)

    def __len__(self) -> int:
        return len(self.columns["row"])

    def take(self) -> dict[str, np.ndarray]:
        batch = {name: np.array(values, dtype=object if name == "error" else None) if name != "frames"
                 else np.stack(values) for name, values in self.columns.items()}
        self.columns = {name: [] for name in self.columns}
        return batch


def read_video(spec: ClipSpec, path: str) -> Iterator[dict]:
    """The decode row of one video: its frames, or why it cannot be read."""
    try:
        clip = spec.read(path)
    except Exception as err:  # one bad video never fails the task
        yield {"error": error_reason(err)}
        return
    yield {"frames": clip.frames, "frame_count": clip.frame_count, "fps": clip.fps, "duration_s": clip.duration_s}


def read_windows(spec: ClipSpec, path: str, window_s: Optional[float], stride_s: Optional[float],
                 shots: Optional[ShotWindows] = None) -> Iterator[dict]:
    """A timeline's decode rows: one per window as it fills (``shot``: its shot with ``--window
    shots``, else -1), the last one also ending the video (``ends``: its frame count, rate and number
    of shots, or its error; a row of its own if no window was read). The end travels with the last
    window so that no chunk boundary holds the video's record back until the next video's rows."""
    reader = TimelineReader(path, spec.num_frames, spec.img_size, window_s, stride_s, threads=spec.threads,
                            decoder=spec.decoder, shots=shots)
    last: dict = {}  # the row of the window read last, handed on once the next one is read
    try:
        for window, clip in reader:
            if last:
                yield last
            last = {"frames": clip.frames, "window": window.index, "start": window.start, "end": window.end,
                    "fps": window.fps, "shot": -1 if window.shot is None else window.shot}
    except Exception as err:  # the windows already read stand, as in the local engine
        yield {**last, "error": error_reason(err), "ends": True}
        return
    shot_count = reader.shot_count
    yield {**last, "frame_count": reader.frame_count, "fps": reader.fps,
           "shots": -1 if shot_count is None else shot_count, "ends": True}


def decode_task(batch: dict[str, np.ndarray], *, paths: list, per_task: int, spec: ClipSpec,
                read: Callable[..., Iterator[dict]], chunk: int, folder: str) -> Iterator[dict[str, np.ndarray]]:
    """A decode task: videos ``[id * per_task, (id + 1) * per_task)`` of the path table
    (``paths[0]``), their ``read`` rows handed on ``chunk`` rows at a time; relative paths are read
    from the driver's ``folder``."""
    single_threaded_decode()
    _work_in(folder)
    blob, offsets = _fetched(paths)
    rows = _Rows(frames_shape(spec))
    for task in batch["id"]:
        for row in range(int(task) * per_task, min((int(task) + 1) * per_task, len(offsets) - 1)):
            for values in read(spec, decode(blob[offsets[row]:offsets[row + 1]].tobytes())):
                rows.add(row, **values)
                if len(rows) >= chunk:
                    yield rows.take()
    if len(rows):
        yield rows.take()


# --------------------------------------------------------------------------- model actors


class ModelActor:
    """One model in a Ray actor: the local engine's :class:`Predictor`, on this actor's GPU or CPU."""

    def __init__(self, model: list, options: PredictOptions, compute: str, threads: Optional[int]):
        """``model[0]``: the model (an object ref); ``compute``: the Predictor method to run, a key of
        :data:`OUTPUTS`; ``threads``: torch threads (None: Ray's default for the actor's CPUs)."""
        if threads:
            torch.set_num_threads(threads)
        _note_pid()
        self.predictor = Predictor(_fetched(model), options)
        self.compute = getattr(self.predictor, compute)
        model, frames = self.predictor.model, self.predictor.num_frames
        shapes = {"probabilities": (model.config.num_classes,), "embedding": (model.embed_dim,),
                  "frame_embeddings": (frames, model.embed_dim)}
        self.outputs = {name: shapes[name] for name in OUTPUTS[compute]}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's rows with the model's outputs in place of the frames (NaN where there are none)."""
        frames, has_frames = batch.pop("frames"), batch["has_frames"]
        for name, shape in self.outputs.items():  # every batch the same shapes: Ray Data joins them in blocks
            batch[name] = np.full((len(has_frames), *shape), np.nan, np.float32)
        if has_frames.any():
            results = self.compute([_Frames(torch.from_numpy(f)) for f in frames[has_frames]])
            for name, result in zip(self.outputs, results if isinstance(results, tuple) else (results,)):
                batch[name][has_frames] = result.numpy()
        return batch


def _fetched(box: list):
    """``box[0]``, from the object store when it is an object ref (refs travel in a list: Ray
    resolves only top-level arguments, and these are fetched where they are used)."""
    import ray

    return ray.get(box[0]) if isinstance(box[0], ray.ObjectRef) else box[0]


def _note_pid() -> None:
    """Tests that kill a model actor find its process here (``STAM_TEST_ACTOR_PIDS``: a folder)."""
    folder = os.environ.get("STAM_TEST_ACTOR_PIDS")
    if folder:
        open(os.path.join(folder, str(os.getpid())), "w").close()
