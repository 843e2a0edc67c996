"""stamcli.engine: the Predictor's batches, order, error records, kept clips and compute_batches,
with a tiny model and generated videos on the CPU."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import TINY_LABELS, make_tiny_model
from synthetic import write_index_video, write_text
from stamcli.decode import read_clip, read_views
from stamcli.engine import PredictOptions, Predictor, VideoItem, error_reason, predict
from stamcli.errors import StamError, VideoError


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    """Seven inputs: five good videos of different lengths, a text file and a missing file, mixed."""
    root = tmp_path_factory.mktemp("engine")
    good = [write_index_video(root / f"g{i}.mp4", 6 + 3 * i, 48, 64) for i in range(5)]
    bad = write_text(root / "notes.mp4")
    return [str(p) for p in (good[0], bad, good[1], good[2], root / "missing.mp4", good[3], good[4])]


GOOD = [0, 2, 3, 5, 6]  # positions of the readable inputs


def _options(**overrides) -> PredictOptions:
    return PredictOptions(**{"device": "cpu", "top_k": 5, "batch_size": 2, "workers": 3, "streams": 2, **overrides})


def _direct_probabilities(model, path: str) -> torch.Tensor:
    clip = read_clip(path, model.config.frames, model.config.img_size)
    with torch.inference_mode():
        return model(clip.frames[None].float() / 255).softmax(-1)[0]


def test_one_record_per_input_in_input_order_with_the_model_s_scores(paths):
    model = make_tiny_model()
    records = predict(paths, model, _options())
    assert [r["path"] for r in records] == paths
    assert [r["status"] for r in records] == ["ok", "error", "ok", "ok", "error", "ok", "ok"]
    assert records[1]["error"].startswith(f"cannot read video {paths[1]}: ")
    assert records[4]["error"] == f"cannot read video {paths[4]}: no such file"
    assert records[1]["predictions"] == [] and records[1]["frames"] is None
    for i in GOOD:
        expected = _direct_probabilities(model, paths[i])
        predictions = records[i]["predictions"]
        assert [p["index"] for p in predictions] == expected.argsort(descending=True).tolist()
        assert [p["label"] for p in predictions] == [TINY_LABELS[p["index"]] for p in predictions]
        assert [p["score"] for p in predictions] == pytest.approx(expected.sort(descending=True).values.tolist(),
                                                                  abs=1e-6)
        assert records[i]["frames"] == 6 + 3 * GOOD.index(i)


def test_the_order_does_not_depend_on_which_video_decodes_first(paths, monkeypatch):
    # the first video is the slowest to decode: later ones finish first, records still come in order
    first_done = threading.Event()
    original = Predictor._decode

    def slow_first(self, path):
        if path == paths[0]:
            assert first_done.wait(30), "the later videos never decoded"
        elif path == paths[3]:
            first_done.set()
        return original(self, path)

    monkeypatch.setattr(Predictor, "_decode", slow_first)
    records = list(Predictor(make_tiny_model(), _options(workers=3, batch_size=1)).predict(paths))
    assert [r["path"] for r in records] == paths


def test_batches_are_batch_size_videos_in_order_with_errors_in_their_place(paths):
    predictor = Predictor(make_tiny_model(), _options(batch_size=3))
    batches = list(predictor.batches(paths))
    assert [[item.path for item in batch] for batch in batches] == [paths[0:3], paths[3:6], paths[6:7]]
    items = [item for batch in batches for item in batch]
    assert [item.error is None for item in items] == [i in GOOD for i in range(7)]
    for item in items:
        if item.error is None:
            assert tuple(item.clip.frames.shape) == (4, 3, 32, 32) and item.frame_count == item.clip.frame_count
        else:
            assert item.clip is None and item.probabilities is None


def test_decoding_runs_a_bounded_number_of_videos_ahead(paths, monkeypatch):
    import concurrent.futures

    import stamcli.engine as engine

    submitted = []

    class CountingPool(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append(args[0])
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(engine, "ThreadPoolExecutor", CountingPool)
    predictor = Predictor(make_tiny_model(), _options(batch_size=1, streams=1, workers=1))
    batches = predictor.batches(paths * 3)
    first = next(batches)
    # batch_size x (streams + 1) + workers = 3 videos handed to the decoders; the 18 others wait
    assert [item.path for item in first] == paths[:1] and submitted == paths[:3]
    next(batches)
    assert submitted == paths[:4]  # one more for each batch taken
    batches.close()


def test_compute_batches_gets_only_readable_clips_and_none_for_a_batch_without_any(paths):
    predictor = Predictor(make_tiny_model(), _options(batch_size=2, streams=2))
    bad_only = [paths[1], paths[4]]
    calls = []

    def compute(clips):
        calls.append(len(clips))
        return [clip.frame_count for clip in clips]

    results = list(predictor.compute_batches(paths[:4] + bad_only, compute))
    assert [[item.path for item in batch] for batch, _ in results] == [paths[0:2], paths[2:4], bad_only]
    assert [value for _, value in results] == [[6], [9, 12], None]
    assert sorted(calls) == [1, 2]  # never called for the batch of unreadable videos


def test_scores_keep_the_clips_only_when_asked(paths):
    model = make_tiny_model()
    kept = list(Predictor(model, _options(), keep_clips=True).scores(paths))
    dropped = list(Predictor(model, _options()).scores(paths))
    for i in GOOD:
        assert torch.equal(kept[i].clip.frames, read_clip(paths[i], 4, 32).frames)
        assert dropped[i].clip is None
        assert torch.allclose(kept[i].probabilities, dropped[i].probabilities)
        assert kept[i].probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert all(kept[i].clip is None and kept[i].probabilities is None for i in (1, 4))


def test_top_k_is_capped_at_the_number_of_classes_and_views_are_averaged(paths):
    model = make_tiny_model()
    predictor = Predictor(model, _options(top_k=50))
    assert predictor.top_k == 5
    assert len(predictor.record(next(iter(predictor.scores(paths[:1]))))["predictions"]) == 5
    # two clips per video: the mean of the two views' softmaxes
    views = Predictor(model, _options(clips=2))
    item = next(iter(views.scores(paths[3:4])))
    frames = read_views(paths[3], 4, 32, clips=2).frames
    with torch.inference_mode():
        per_view = model(frames.float() / 255).softmax(-1)
    assert views.record(item)["clips"] == 2
    assert not torch.allclose(per_view[0], per_view[1], atol=1e-4)  # the two clips do differ
    assert torch.allclose(item.probabilities, per_view.mean(0), atol=1e-6)


def test_error_reason_is_one_line_and_names_unexpected_errors():
    assert error_reason(VideoError("cannot read video x: broken\nsecond line")) == "cannot read video x: broken"
    assert error_reason(StamError("")) == "StamError"
    assert error_reason(ValueError("bad value\nmore")) == "ValueError: bad value"
    assert error_reason(RuntimeError()) == "RuntimeError"
    item = VideoItem("x.mp4", error="ValueError: bad value")
    record = Predictor(make_tiny_model(), _options()).record(item)
    assert (record["status"], record["error"], record["predictions"]) == ("error", "ValueError: bad value", [])
