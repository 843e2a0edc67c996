"""The run loop of predict and embed (stamcli.runner) with a fake source and sink: counts, progress
callbacks, Ctrl-C and the sink always closed. No model, no video: the loop does not depend on where
results come from."""

from __future__ import annotations

import pytest

from stamcli.runner import RunSummary, VideoResult, run_loop
from stamcli.writers import error_record, make_record


class FakeSource:
    """Results of ``videos`` as batches of ``batch`` (every third video fails); ``interrupt_after``
    batches are given, then Ctrl-C arrives as the next one is being computed."""

    def __init__(self, batch: int = 2, interrupt_after: int | None = None, windows: int = 0):
        self.batch, self.interrupt_after, self.windows = batch, interrupt_after, windows
        self.closed = False
        self.given: list[str] = []

    def results(self, videos):
        try:
            pending = []
            for index, video in enumerate(videos):
                for k in range(self.windows):
                    pending.append(VideoResult(index, make_record(video, model="m", type="window", window=k,
                                                                  start_s=k, end_s=k + 1)))
                record = error_record(video, "broken", model="m") if index % 3 == 2 else make_record(video, model="m")
                pending.append(VideoResult(index, record))
                if (index + 1) % self.batch == 0 or index == len(videos) - 1:
                    if self.interrupt_after is not None and len(self.given) // self.batch >= self.interrupt_after:
                        raise KeyboardInterrupt
                    self.given += [r.record["path"] for r in pending if r.record.get("type") != "window"]
                    yield pending
                    pending = []
        finally:
            self.closed = True


class FakeSink:
    def __init__(self, fail_on: str | None = None):
        self.written: list[VideoResult] = []
        self.entered = self.exited = False
        self.exit_info = None
        self.fail_on = fail_on

    def write(self, results):
        for result in results:
            if result.record["path"] == self.fail_on:
                raise KeyboardInterrupt  # Ctrl-C while writing
            self.written.append(result)

    def __enter__(self):
        self.entered = True
        return self

    def __exit__(self, *exc):
        self.exited = True
        self.exit_info = exc[0]
        return None


VIDEOS = [f"v{i}.mp4" for i in range(7)]


def test_counts_callbacks_and_summary():
    source, sink, started, seen = FakeSource(batch=3), FakeSink(), [], []
    summary = run_loop(source, VIDEOS, sink, skipped=4, output="out.csv", on_start=started.append,
                       on_record=lambda record: seen.append(record["path"]))
    assert isinstance(summary, RunSummary)
    assert (summary.ok, summary.failed, summary.skipped, summary.output, summary.interrupted) == (5, 2, 4, "out.csv",
                                                                                                 False)
    assert started == [7] and seen == VIDEOS and [r.record["path"] for r in sink.written] == VIDEOS
    assert [r.index for r in sink.written] == list(range(7))
    assert sink.entered and sink.exited and sink.exit_info is None and source.closed
    assert summary.elapsed_s > 0 and summary.videos_per_s == pytest.approx(7 / summary.elapsed_s)


def test_window_records_are_progress_but_not_counted():
    sink, seen = FakeSink(), []
    summary = run_loop(FakeSource(batch=2, windows=3), VIDEOS[:4], sink, on_record=seen.append)
    assert (summary.ok, summary.failed) == (3, 1)
    assert len(seen) == len(sink.written) == 4 * 4
    assert [r.get("type") for r in seen[:4]] == ["window", "window", "window", None]
    assert sum(1 for r in seen if r.get("type") == "window") == 12


def test_ctrl_c_in_the_source_gives_an_interrupted_summary_and_closes_the_sink():
    source, sink = FakeSource(batch=2, interrupt_after=2), FakeSink()
    summary = run_loop(source, VIDEOS, sink)
    assert summary.interrupted
    assert [r.record["path"] for r in sink.written] == VIDEOS[:4]  # two whole batches, nothing after
    assert (summary.ok, summary.failed) == (3, 1)
    assert sink.exited and sink.exit_info is KeyboardInterrupt and source.closed


def test_ctrl_c_while_writing_stops_the_source_before_the_sink_closes():
    order = []

    class Source(FakeSource):
        def results(self, videos):
            try:
                yield from super().results(videos)
            finally:
                order.append("source stopped")

    class Sink(FakeSink):
        def __exit__(self, *exc):
            order.append("sink closed")
            return super().__exit__(*exc)

    sink = Sink(fail_on=VIDEOS[3])
    summary = run_loop(Source(batch=2), VIDEOS, sink)
    assert summary.interrupted and (summary.ok, summary.failed) == (2, 0)  # batch 2 was cut while written
    assert [r.record["path"] for r in sink.written] == VIDEOS[:3]
    assert order == ["source stopped", "sink closed"]


def test_other_errors_propagate_after_the_sink_is_closed():
    class Broken(FakeSource):
        def results(self, videos):
            yield [VideoResult(0, make_record(videos[0]))]
            raise OSError("disk gone")

    sink = FakeSink()
    with pytest.raises(OSError, match="disk gone"):
        run_loop(Broken(), VIDEOS, sink)
    assert sink.exited and sink.exit_info is OSError and len(sink.written) == 1
