"""How stamcli shares the CPU: decode threads, model streams and torch's intra-op threads.

- **Decode threads** (:func:`default_workers`) read videos ahead of the model; each runs its torch
  ops (the antialiased resize) on one core (:func:`one_torch_thread`, :func:`single_threaded_decode`).
- **Model streams** (:class:`ModelStreams`, :func:`default_streams`): on the CPU several batches go
  through the model at once, each on its share of the cores (one core each on up to 4 cores),
  instead of one batch spread over every core. A forward pass is hundreds of ops, and with every
  core on each op the cores wait for each other at the end of every op (layer norms, GELUs,
  attention on 197 tokens). Each stream holds a batch and its activations in memory. Gains and
  memory cost: ``benchmarks/README.md``, "Model streams". On a GPU there is one stream: large
  batches keep the device busy.
- **Several processes on one machine** (``torchrun --nproc-per-node N``): each takes its share of
  the cores (:func:`process_cores`), so N ranks do not start N times as many threads as there are cores.

ATen's OpenMP backend keeps the intra-op thread count per calling thread
(:data:`PER_THREAD_OMP`), which is what lets a decode thread or a stream use one core while the
others keep theirs. With another backend the count is process-wide, and stamcli keeps one
stream and leaves the count alone.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import torch

__all__ = ["PER_THREAD_OMP", "MAX_STREAMS", "cpu_cores", "process_cores", "default_workers", "default_streams",
           "one_torch_thread", "single_threaded_decode", "ModelStreams", "StreamCancelled", "WAITING"]

#: ATen's OpenMP backend keeps the intra-op thread count per calling thread, so one thread can
#: run on one core while others (the model) keep theirs.
PER_THREAD_OMP = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()

#: Most model streams by default: each holds a batch and its activations.
MAX_STREAMS = 4

T = TypeVar("T")
R = TypeVar("R")

#: What the items given to :meth:`ModelStreams.map` may yield while their next item is not ready:
#: the results computed meanwhile are handed on then, not once more items have come.
WAITING = object()


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def process_cores() -> int:
    """This process's share of :func:`cpu_cores`: all of them, or ``cores // N`` when torchrun
    started N processes on this machine (``LOCAL_WORLD_SIZE``)."""
    from .distributed import Distributed

    return max(1, cpu_cores() // max(1, Distributed.from_env().local_world))


def default_workers(device: Optional[torch.device] = None) -> int:
    """Decode threads. On the CPU the model needs the cores too: ``min(4, cores)``. With a CUDA
    GPU the cores only decode, and decoding is the bottleneck: every core but the one that feeds
    the GPU (``cores - 1``, 1 to 32). ``cores`` is this process's share (:func:`process_cores`)."""
    cores = process_cores()
    if device is not None and device.type == "cuda":
        return max(1, min(32, cores - 1))
    return max(1, min(4, cores))


def default_streams(device: Optional[torch.device] = None) -> int:
    """Model streams: on the CPU ``min(4, cores)`` (one batch per core up to 4 cores; beyond, each
    stream gets ``cores / streams`` threads); 1 on a GPU, or where the thread count is process-wide.
    ``cores`` is this process's share (:func:`process_cores`)."""
    if (device is not None and device.type != "cpu") or not PER_THREAD_OMP:
        return 1
    return max(1, min(MAX_STREAMS, process_cores()))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run this thread's torch ops on one core, then restore its thread count (OpenMP builds).

    Preprocessing is 16 small resizes per clip: splitting each over every core gains little on
    an idle machine and loses a lot on a busy one (OpenMP threads wait for each other; measured
    in ``benchmarks/README.md``, "Measurements behind the code").
    """
    previous = torch.get_num_threads()
    if not PER_THREAD_OMP or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Without this each decode thread opens its own OpenMP team next to the model's, which competes
# with the model for the cores (measured: benchmarks/README.md, "Measurements behind the code").
def single_threaded_decode() -> None:
    """Decode-thread initializer: torch ops in this thread use one core (OpenMP builds only)."""
    if PER_THREAD_OMP:
        torch.set_num_threads(1)


class StreamCancelled(Exception):
    """Raised inside a stream's model call once its :class:`ModelStreams` is closed early."""


class ModelStreams:
    """Runs up to ``count`` model calls at once, each in a thread of its own with ``threads_each``
    intra-op threads (default: this thread's count divided among the streams).

    With ``count == 1`` calls run in the calling thread, exactly as without streams. Use as a
    context manager; :meth:`map` is the usual entry point. Leaving the context early (an error,
    Ctrl-C) stops the calls still running at their next module of ``model`` (a forward pre-hook
    on each module while the streams are open) and waits for the threads: a process must not exit
    while a thread is inside torch (it aborts).
    """

    def __init__(self, count: int = 1, threads_each: Optional[int] = None, model: Optional[torch.nn.Module] = None):
        if count < 1:
            raise ValueError("streams must be at least 1")
        self.count = count
        self.threads_each = threads_each or max(1, torch.get_num_threads() // count)
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._threads = [threading.Thread(target=self._serve, name=f"stam-model-{i}", daemon=True)
                         for i in range(count if count > 1 else 0)]
        self._hooks = [module.register_forward_pre_hook(self._check) for module in model.modules()] \
            if model is not None and self._threads else []
        for thread in self._threads:
            thread.start()

    def _check(self, *_) -> None:
        if self._cancelled.is_set() and threading.current_thread() in self._threads:
            raise StreamCancelled

    def _serve(self) -> None:
        if PER_THREAD_OMP:
            torch.set_num_threads(self.threads_each)
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to whoever waits on the result
                future.set_exception(err)

    def submit(self, fn: Callable[..., R], *args) -> "Future[R]":
        """``fn(*args)`` on a free stream (in this thread with one stream)."""
        future: Future = Future()
        if not self._threads:
            future.set_result(fn(*args))
        else:
            self._tasks.put((future, fn, args))
        return future

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
        """``(item, fn(item))`` for each item, in order, with up to :attr:`count` calls running while
        the caller handles earlier results (``items`` is read at most ``count`` ahead). ``items``
        may yield :data:`WAITING` while the next item is not ready: the results already computed
        are handed on then."""
        running: deque[tuple[T, Future]] = deque()
        try:
            for item in items:
                if item is WAITING:
                    while running and running[0][1].done():
                        done, future = running.popleft()
                        yield done, future.result()
                    continue
                running.append((item, self.submit(fn, item)))
                if len(running) >= self.count:
                    done, future = running.popleft()
                    yield done, future.result()
            while running:
                done, future = running.popleft()
                yield done, future.result()
        finally:
            for _, future in running:  # left behind by an error or an interrupt
                future.cancel()

    def close(self, cancel: bool = False) -> None:
        """End the threads once their calls return, or at their next module with ``cancel``; wait for them."""
        if cancel:
            self._cancelled.set()
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> "ModelStreams":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(cancel=exc_type is not None)
