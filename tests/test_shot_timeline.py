"""`stam predict --window shots --events --format ...` end to end, with a tiny model fine-tuned in the
test to tell the generated scenes apart, so that labels are checked as well as spans (CPU)."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import opentimelineio as otio
import pytest
import torch
from typer.testing import CliRunner

from conftest import interrupt_when
from synthetic import SCENES, ShotSpec, write_shot_video, write_video
from stamcli import create_model, save_checkpoint
from stamcli.cli import app
from stamcli.train.config import FinetuneConfig
from stamcli.train.finetune import finetune
from stamcli.writers import read_records

runner = CliRunner()
FPS = 25
SCENE_LABELS = ["blue", "green", "red", "yellow"]  # class folders of the training data: sorted names


def _predict(*args):
    """``stam predict --device cpu ARGS``."""
    return runner.invoke(app, ["predict", "--device", "cpu", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory) -> Path:
    """A tiny STAM fine-tuned on 6 clips of each scene (8 frames, 64x36 px, from different moments of the
    scene), checked on 2 others. Label smoothing keeps every score below 1 (at most
    0.925 for 4 classes), so a --min-score of 1.0 is out of reach whatever the CPU."""
    root = tmp_path_factory.mktemp("scenes")
    for part, clips, offset in (("train", 6, 0), ("val", 2, 9)):
        rows = []
        for label in SCENE_LABELS:
            (root / part / label).mkdir(parents=True)
            for i in range(clips):
                frames = list(SCENES[label].frames(8, 36, 64, start=17 * i + offset))
                name = f"{label}/{label}_{i}.avi"
                write_video(root / part / name, [f.astype("uint8") for f in frames], fps=FPS, fourcc="MJPG")
                rows.append((name, label))
        with open(root / part / "labels.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("path", "label"), *rows])
    torch.manual_seed(0)
    base = create_model("vit_tiny_patch16_224", frames=4, num_classes=2, img_size=32, embed_dim=64, depth=1,
                        num_heads=2, temporal_layers=1, temporal_heads=4, temporal_ff=128, labels=["a", "b"])
    result = finetune(FinetuneConfig(
        data=str(root / "train" / "labels.csv"), val=str(root / "val" / "labels.csv"),
        model=str(save_checkpoint(base, root / "base.safetensors")),
        epochs=6, batch_size=8, lr=1e-2, warmup=1, label_smoothing=0.1, weight_decay=0.0, workers=0, seed=0,
        device="cpu", freeze_backbone=True, output=str(root / "run")))
    assert result.best_top1 == 1.0, result.best_top1  # it tells the scenes apart
    return result.run_dir / "best.safetensors"


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """red 3 s | green 2 s | blue 12 s | red 1.6 s | yellow 2.4 s | red 3 s, hard cuts, 160x90 at 25 fps."""
    root = tmp_path_factory.mktemp("footage")
    shots = (ShotSpec("red", 75), ShotSpec("green", 50), ShotSpec("blue", 300), ShotSpec("red", 40),
             ShotSpec("yellow", 60), ShotSpec("red", 75))
    truth = write_shot_video(root / "match.mp4", shots, fps=FPS, height=90, width=160)
    assert truth.cuts == (75, 125, 425, 465, 525) and truth.frames == 600
    return root / "match.mp4"


def test_shots_are_tagged_with_their_scene_and_merged_into_events(scene_model, footage, tmp_path):
    out = tmp_path / "t.jsonl"
    result = _predict(footage, "-m", scene_model, "--window", "shots", "--max-shot", 5, "--events", "--event-gap", 2.5,
                      "--device", "cpu", "-k", 2, "-o", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == ["window"] * 8 + ["event"] * 4 + ["video"]
    windows, events, video = records[:8], records[8:12], records[12]
    # shots at their exact frames; the 12 s shot in three equal parts of at most 5 s
    assert [(w["window"], w["shot"], round(w["start_s"] * FPS), round(w["end_s"] * FPS)) for w in windows] == [
        (0, 0, 0, 75), (1, 1, 75, 125), (2, 2, 125, 225), (3, 2, 225, 325), (4, 2, 325, 425), (5, 3, 425, 465),
        (6, 4, 465, 525), (7, 5, 525, 600)]
    assert windows[1]["start_s"] == 3.0 and windows[1]["end_s"] == 5.0
    assert [w["predictions"][0]["label"] for w in windows] == ["red", "green", "blue", "blue", "blue", "red",
                                                               "yellow", "red"]
    # events: the three blue parts are one event; the 2.4 s yellow shot is bridged by the reds around it
    assert [(e["label"], e["start_s"], e["end_s"], e["windows"]) for e in events] == [
        ("red", 0.0, 3.0, [0]), ("green", 3.0, 5.0, [1]), ("blue", 5.0, 17.0, [2, 3, 4]), ("red", 17.0, 24.0, [5, 7])]
    assert [e["event"] for e in events] == [0, 1, 2, 3]
    assert all(e["predictions"][0]["label"] == e["label"] and e["predictions"][0]["score"] == e["score"]
               for e in events)
    blue = [w["predictions"][0]["score"] for w in windows[2:5]]
    assert events[2]["score"] == pytest.approx(sum(blue) / 3)  # equal parts: the plain mean
    assert (video["shots"], video["windows"], video["events"], video["duration_s"]) == (6, 8, 4, 24.0)
    assert {c["label"]: round(c["seconds"], 9) for c in video["coverage"]} == {"red": 7.6, "blue": 12.0, "green": 2.0,
                                                                              "yellow": 2.4}


def test_editor_files_and_chapters_go_where_subtitles_go(scene_model, footage, tmp_path):
    common = ["-m", scene_model, "--window", "shots", "--max-shot", 5, "--device", "cpu", "-q"]
    # otio beside the video, from the output's extension; markers are the events
    video = tmp_path / "match.mp4"
    video.write_bytes(footage.read_bytes())
    result = _predict(video, *common, "--events", "--event-gap", 2.5, "--format", "otio")
    assert result.exit_code == 0, result.output
    (clip,) = otio.adapters.read_from_file(str(tmp_path / "match.otio")).find_clips()
    assert otio.url_utils.filepath_from_url(clip.media_reference.target_url) == str(video)
    assert [(m.name, m.marked_range.start_time.value, m.marked_range.duration.value) for m in clip.markers] == [
        ("red", 0, 75), ("green", 75, 50), ("blue", 125, 300), ("red", 425, 175)]
    assert list(clip.markers[2].metadata["stamcli"]["windows"]) == [2, 3, 4]
    # an EDL per window without --events, in an --output folder
    result = _predict(video, *common, "--format", "edl", "-o", tmp_path / "edl")
    assert result.exit_code == 0, result.output
    timeline = otio.adapters.read_from_file(str(tmp_path / "edl" / "match.edl"), rate=FPS)
    clips = timeline.find_clips()
    assert [(c.name, c.source_range.start_time.value, c.source_range.duration.value) for c in clips] == [
        ("red", 0, 75), ("green", 75, 50), ("blue", 125, 100), ("blue", 225, 100), ("blue", 325, 100), ("red", 425, 40),
        ("yellow", 465, 60), ("red", 525, 75)]
    # chapters and subtitles from the events, into the one file named
    result = _predict(video, *common, "--events", "--event-gap", 2.5, "-o", tmp_path / "one.chapters.vtt")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one.chapters.vtt").read_text() == (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:03.000\nred\n\n2\n00:00:03.000 --> 00:00:05.000\ngreen\n\n"
        "3\n00:00:05.000 --> 00:00:17.000\nblue\n\n4\n00:00:17.000 --> 00:00:24.000\nred\n\n")
    result = _predict(video, *common, "--events", "--event-gap", 2.5, "--format", "srt")
    assert result.exit_code == 0, result.output
    cues = [c.split("\n") for c in (tmp_path / "match.srt").read_text().split("\n\n") if c]
    assert [(c[0], c[1], c[2].split(" (")[0]) for c in cues] == [  # the events, not the windows
        ("1", "00:00:00,000 --> 00:00:03,000", "red"), ("2", "00:00:03,000 --> 00:00:05,000", "green"),
        ("3", "00:00:05,000 --> 00:00:17,000", "blue"), ("4", "00:00:17,000 --> 00:00:24,000", "red")]
    result = _predict(video, *common, "--events", "--format", "ffmetadata", "-o", tmp_path / "meta")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "meta" / "match.ffmetadata").read_text()
    assert text.startswith(";FFMETADATA1\n\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=3000\ntitle=red\n")
    assert text.count("[CHAPTER]") == 6


def test_csv_has_shot_and_event_columns(tiny_checkpoint, footage, tmp_path):
    out = tmp_path / "t.csv"
    result = _predict(footage, "-m", tiny_checkpoint, "--window", "shots", "--events", "--min-event", 0, "--event-gap",
                      0, "-k", 1, "--device", "cpu", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "status", "error", "label_1", "score_1", "frames", "model", "duration_s", "fps", "type",
                       "window", "start_s", "end_s", "shot", "event", "windows"]
    back = read_records(out)
    kinds = [r["type"] for r in back]
    assert kinds[:7] == ["window"] * 7 and kinds[-1] == "video" and set(kinds[7:-1]) == {"event"}
    # the 12 s shot is cut in two at the default --max-shot of 10 s
    assert [(r["window"], r["shot"], r["start_s"], r["end_s"]) for r in back[:7]] == [
        (0, 0, 0.0, 3.0), (1, 1, 3.0, 5.0), (2, 2, 5.0, 11.0), (3, 2, 11.0, 17.0), (4, 3, 17.0, 18.6),
        (5, 4, 18.6, 21.0), (6, 5, 21.0, 24.0)]
    events = [r for r in back if r["type"] == "event"]
    assert sorted(k for e in events for k in e["windows"]) == list(range(7))  # no gap, nothing dropped
    assert all(isinstance(e["windows"], list) and e["event"] == i for i, e in enumerate(events))
    assert events[0]["predictions"][0]["label"] == back[0]["predictions"][0]["label"]


SHOT_WINDOWS = [(0, 0, 75, 0), (1, 75, 125, 1), (2, 125, 225, 2), (3, 225, 325, 2), (4, 325, 425, 2),
                (5, 425, 465, 3), (6, 465, 525, 4), (7, 525, 600, 5)]


def _read(footage, decoder="auto", **shots):
    from stamcli.timeline import ShotWindows, TimelineReader

    reader = TimelineReader(footage, 4, 32, None, decoder=decoder, shots=ShotWindows(max_shot_s=5, **shots))
    return reader, [(w.index, w.start, w.end, w.shot, clip.indices, clip.frames) for w, clip in reader]


def test_events_of_fixed_windows_in_json(scene_model, footage, tmp_path):
    out = tmp_path / "t.json"
    result = _predict(footage, "-m", scene_model, "--window", 4, "--events", "--device", "cpu", "-k", 1, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())  # one JSON array
    windows = [r for r in records if r["type"] == "window"]
    events = [r for r in records if r["type"] == "event"]
    assert [(w["start_s"], w["end_s"]) for w in windows] == [(4.0 * k, 4.0 * k + 4) for k in range(6)]
    # 0-4 s red then green, 4-8 s green then blue, blue to 17 s, then red, yellow and red: the windows
    # that straddle a cut take either label, but blue fills windows 2 and 3 (8-16 s) and red the last
    assert [w["predictions"][0]["label"] for w in windows][2:4] == ["blue", "blue"]
    assert windows[5]["predictions"][0]["label"] == "red"
    assert records[-1]["type"] == "video" and records[-1]["events"] == len(events)
    assert sorted(k for e in events for k in e["windows"]) == sorted(set(k for e in events for k in e["windows"]))
    assert all(e["end_s"] > e["start_s"] and e["windows"] for e in events)
    assert [e["event"] for e in events] == list(range(len(events)))
    blue = [e for e in events if e["label"] == "blue"]
    assert len(blue) == 1 and 2 in blue[0]["windows"] and 3 in blue[0]["windows"]


def test_min_score_leaves_windows_unlabelled_and_they_make_no_event(scene_model, footage, tmp_path):
    out = tmp_path / "t.jsonl"
    result = _predict(footage, "-m", scene_model, "--window", "shots", "--max-shot", 5, "--events", "--event-gap", 0,
                      "--min-event", 0, "--min-score", 1.0, "--device", "cpu", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == ["window"] * 8 + ["video"]  # no label reached 1.0: no event
    assert all(r["predictions"] == [] for r in records) and records[-1]["events"] == 0


def test_shots_and_events_in_parquet_read_back_as_jsonl_and_resume(scene_model, footage, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    args = [footage, "-m", scene_model, "--window", "shots", "--max-shot", 5, "--events", "--event-gap", 2.5,
            "--device", "cpu", "-q"]
    assert _predict(*args, "-o", tmp_path / "t.jsonl").exit_code == 0
    result = _predict(*args, "-o", tmp_path / "t.parquet")
    assert result.exit_code == 0, result.output
    jsonl = read_records(tmp_path / "t.jsonl")
    assert read_records(tmp_path / "t.parquet") == jsonl  # windows, events and the video record, as JSONL
    table = pq.read_table(tmp_path / "t.parquet").to_pydict()
    assert table["type"] == ["window"] * 8 + ["event"] * 4 + ["video"]
    assert table["shot"][:8] == [0, 1, 2, 2, 2, 3, 4, 5] and table["shots"][-1] == 6
    assert table["label"][8:12] == ["red", "green", "blue", "red"] and table["event"][8:12] == [0, 1, 2, 3]
    assert table["event_windows"][8:12] == [[0], [1], [2, 3, 4], [5, 7]] and table["windows"][-1] == 8
    assert table["events"][-1] == 4 and table["extra"] == [None] * 13  # every field in its own column
    result = _predict(*args, "-o", tmp_path / "t.parquet", "--resume")
    assert result.exit_code == 0 and read_records(tmp_path / "t.parquet") == jsonl  # done: nothing added


@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_both_decoders_give_the_same_shot_windows_in_one_pass(footage, decoder):
    reader, got = _read(footage, decoder)
    assert reader.decoder == ("pyav" if decoder == "auto" else "opencv") and reader.frame_count == 600
    assert [g[:4] for g in got] == SHOT_WINDOWS
    assert got[1][4] == [81, 93, 106, 118]  # floor((i + 0.5) * 50 / 4) inside the shot from frame 75
    assert reader.shot_list.decoder == reader.decoder and len(reader.shot_list.shots) == 6
    assert reader.reread == 0 and reader.grabs == 600  # every frame decoded once, no second pass
    assert reader.retrieved == 4 * 8  # only the sampled frames are preprocessed
    # only the open shot is kept: the 12 s blue shot (300 frames) and the frames that decide its end
    assert 300 < reader.peak_buffered < 340


def test_a_shot_longer_than_the_buffer_is_read_again_with_the_same_frames(footage):
    _, once = _read(footage)
    reader, twice = _read(footage, buffer_mb=100 * 160 * 90 * 3 / 2**20)  # 100 frames of 160x90
    assert reader.reread == 6 and reader.peak_buffered <= 101  # from the blue shot on: a second pass
    assert [g[:5] for g in twice] == [g[:5] for g in once] and [g[:4] for g in once] == SHOT_WINDOWS
    assert all(torch.equal(a[5], b[5]) for a, b in zip(once, twice))  # the same frames, bit for bit
    reader, none_kept = _read(footage, decoder="opencv", buffer_mb=0)
    assert reader.reread == 8 and [g[:5] for g in none_kept] == [g[:5] for g in once]
    assert all(torch.equal(a[5], b[5]) for a, b in zip(once, none_kept))


@pytest.mark.parametrize("buffer_mb", [512, 1])
def test_pyav_giving_up_while_tagging_shots_hands_each_window_on_once(footage, monkeypatch, buffer_mb):
    from stamcli.decode import SparseFrameStream, Unsupported

    def failing(method, after):
        def wrapped(self, *args):
            for n, item in enumerate(method(self, *args)):
                if n == after:
                    raise Unsupported("simulated")
                yield item
        return wrapped

    # part-way through the pass that finds the shots, after the first windows went out (or, with a
    # small buffer, part-way through the second pass)
    if buffer_mb == 512:
        monkeypatch.setattr(SparseFrameStream, "every_frame", failing(SparseFrameStream.every_frame, 200))
    else:
        monkeypatch.setattr(SparseFrameStream, "frames", failing(SparseFrameStream.frames, 10))
    reader, got = _read(footage, buffer_mb=buffer_mb)
    assert [g[:4] for g in got] == SHOT_WINDOWS
    assert reader.decoder == "opencv"


def test_resume_after_ctrl_c_keeps_whole_videos_and_their_events(tiny_checkpoint, footage, tmp_path, monkeypatch):
    from stamcli.timeline import TimelinePredictor

    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).write_bytes(footage.read_bytes())
    out = tmp_path / "t.jsonl"
    args = [folder, "-m", tiny_checkpoint, "--window", "shots", "--events", "--device", "cpu", "-o", out, "-b", 1]
    original = TimelinePredictor.predict

    def interrupted(self, paths):
        of_b = 0
        for record in original(self, paths):
            of_b += record["path"].endswith("b.mp4")
            if of_b == 3:  # a is done; b: 2 of its windows
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(TimelinePredictor, "predict", interrupted)
    result = _predict(*args)
    assert result.exit_code == 130 and "--resume" in result.output
    first = read_records(out)
    kinds = [(Path(r["path"]).name, r["type"]) for r in first]
    assert kinds[:7] == [("a.mp4", "window")] * 7 and kinds[-3:] == [("a.mp4", "video"), ("b.mp4", "window"),
                                                                     ("b.mp4", "window")]
    assert {k for k in kinds[7:-3]} == {("a.mp4", "event")}
    monkeypatch.setattr(TimelinePredictor, "predict", original)
    result = _predict(*args, "--resume")
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert records[: len(first) - 2] == first[:-2]
    b = [r for r in records if r["path"].endswith("b.mp4")]
    assert [r["type"] for r in b][:7] == ["window"] * 7 and b[-1]["type"] == "video"
    assert [r["window"] for r in b if r["type"] == "window"] == list(range(7))  # no duplicates
    assert b[-1]["events"] == sum(r["type"] == "event" for r in b)


def test_ctrl_c_in_the_middle_of_shots_leaves_a_valid_file_and_resume_finishes(tiny_checkpoint, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    long = write_shot_video(folder / "v0.mp4", [ShotSpec("red", 750), ShotSpec("blue", 750), ShotSpec("green", 750)],
                            fps=FPS, height=90, width=160)
    assert long.frames == 2250
    (folder / "v1.mp4").write_bytes((folder / "v0.mp4").read_bytes())
    out = tmp_path / "t.jsonl"
    command = ["predict", str(folder), "-m", str(tiny_checkpoint), "--window", "shots", "--device", "cpu", "-o", str(out)]
    # the first shot's windows are written as soon as its end is certain, while the pass that finds the
    # shots still has two thirds of the first video to read: Ctrl-C while the run waits to write its
    # third record (one record a call), the first shot's last part
    stderr = interrupt_when(command, hold=("stamcli.tagging:RecordSink.write", 3))
    assert "interrupted" in stderr and "--resume" in stderr
    kept = read_records(out)  # a valid file: whole records, the first video not done
    assert [(Path(r["path"]).name, r["type"], r["shot"], r["start_s"], r["end_s"]) for r in kept] == [
        ("v0.mp4", "window", 0, 0.0, 10.0), ("v0.mp4", "window", 0, 10.0, 20.0)]
    result = _predict(folder, "-m", tiny_checkpoint, "--window", "shots", "--device", "cpu", "-o", out, "--resume",
                      "-q")
    assert result.exit_code == 0, result.output
    records = read_records(out)
    for k in range(2):  # every video once, whole: 3 shots of 30 s in 10 s parts
        mine = [r for r in records if r["path"].endswith(f"v{k}.mp4")]
        assert [(r["type"], r["shot"] if r["type"] == "window" else r["shots"], r["start_s"], r["end_s"])
                for r in mine] == [*(("window", j // 3, 10.0 * j, 10.0 * j + 10) for j in range(9)),
                                   ("video", 3, 0.0, 90.0)]


def test_stopping_the_run_stops_the_pass_that_finds_the_shots(tiny_checkpoint, footage, monkeypatch):
    """What Ctrl-C does to a timeline run: the consumer stops the generator, which sets the stop event;
    the decode thread, in the middle of a shot, leaves the video at the next frame instead of reading on."""
    import threading

    import stamcli.timeline as timeline
    from stamcli import PredictOptions, Predictor, load_model
    from stamcli.shots import ShotDetector

    events = []

    class Event(threading.Event):
        def __init__(self):
            super().__init__()
            events.append(self)

    pushed = []
    push = ShotDetector.push

    def counted(self, bgr):
        push(self, bgr)
        pushed.append(self.frames)
        if self.frames == 200:  # inside the 12 s blue shot: wait (at most 30 s) for the run to stop
            events[-1].wait(30)

    monkeypatch.setattr(timeline.threading, "Event", Event)
    monkeypatch.setattr(ShotDetector, "push", counted)
    predictor = Predictor(load_model(str(tiny_checkpoint)), PredictOptions(device="cpu", batch_size=1))
    records = timeline.TimelinePredictor(predictor, None, shots=timeline.ShotWindows()).predict([str(footage)])
    first = next(records)  # the first shot's window (frames 0-75), out while frame 200 is being read
    assert (first["type"], first["window"], first["end_s"]) == ("window", 0, 3.0)
    records.close()  # as a KeyboardInterrupt in the consumer does: stop, then join the decode thread
    assert events[-1].is_set() and max(pushed) <= 201  # it stopped at the next frame, not at frame 600


@pytest.mark.parametrize("args, message", [
    (["--window", "shots", "--stride", 2], "--stride cannot be combined with --window shots"),
    (["--window", 2, "--max-shot", 5], "--max-shot needs --window shots"),
    (["--window", "shots", "--max-shot", 0], "--max-shot must be a number of seconds greater than 0, got 0"),
    (["--window", "scenes"], "--window takes a number of seconds or 'shots', got 'scenes'"),
    (["--events"], "--events needs --window"),
    (["--window", 2, "--event-gap", 1], "--event-gap and --min-event need --events"),
    (["--window", 2, "--events", "--min-event", -1], "--min-event must be a number of seconds, 0 or more, got -1"),
])
def test_usage_errors_exit_2(tiny_checkpoint, footage, args, message):
    result = _predict(footage, "-m", tiny_checkpoint, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_the_pass_that_finds_the_shots_reports_each_frame_and_can_be_stopped(footage):
    from stamcli.timeline import ShotWindows, TimelineReader

    seen = []

    def on_frame(k):
        seen.append(k)
        if k == 99:
            raise KeyboardInterrupt  # what the decode thread does when the run stops

    with pytest.raises(KeyboardInterrupt):
        list(TimelineReader(footage, 4, 32, None, shots=ShotWindows(), on_frame=on_frame, decoder="auto"))
    assert seen == list(range(100))
    seen.clear()
    assert len(list(TimelineReader(footage, 4, 32, None, shots=ShotWindows(), on_frame=seen.append))) == 7
    assert seen == list(range(600))


def test_table_on_stdout_shows_shots_and_events(tiny_checkpoint, footage):
    result = _predict(footage, "-m", tiny_checkpoint, "--window", "shots", "--events", "--event-gap", 0,
                      "--min-event", 0, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum("match.mp4 [" in line and "s]" in line and "event" not in line for line in lines) == 7  # windows
    assert any("match.mp4 [event 0.0-" in line for line in lines)
    assert sum("[share of time]" in line for line in lines) == 1


def test_torchrun_merge_keeps_shots_and_events(tmp_path):
    from stamcli.distributed import Distributed
    from stamcli.events import EventOptions
    from stamcli.tagging import TaggingJob, TimelinePlan, _merge_parts, _part_path
    from stamcli.timeline import ShotWindows
    from stamcli.writers import make_record, open_writer

    plan = TimelinePlan(None, None, ShotWindows(), EventOptions())
    assert plan.columns == ("type", "window", "start_s", "end_s", "shot", "event", "windows")
    top = [{"label": "red", "index": 2, "score": 0.9}]
    out = tmp_path / "m.csv"
    job = TaggingJob(paths=[], output=str(out), window="shots", events=True)
    for rank, path in enumerate(("a", "b")):
        with open_writer(_part_path(str(out), rank, 2), "csv", top_k=1, columns=plan.columns) as writer:
            writer.write(make_record(path, predictions=top, type="window", window=0, start_s=0.0, end_s=3.0, shot=0))
            writer.write(make_record(path, predictions=top, type="window", window=1, start_s=3.0, end_s=5.0, shot=1))
            writer.write(make_record(path, predictions=top, type="event", window=None, start_s=0.0, end_s=5.0,
                                     event=0, label="red", score=0.9, windows=[0, 1]))
            writer.write(make_record(path, predictions=top, type="video", window=None, start_s=0.0, end_s=5.0))
    _merge_parts(job, "csv", 1, Distributed(0, 2), plan.columns)
    merged = read_records(out)
    assert [(r["path"], r["type"], r.get("shot"), r.get("windows")) for r in merged] == [
        ("a", "window", 0, None), ("a", "window", 1, None), ("a", "event", None, [0, 1]), ("a", "video", None, None),
        ("b", "window", 0, None), ("b", "window", 1, None), ("b", "event", None, [0, 1]), ("b", "video", None, None)]


def test_ray_decode_tasks_carry_the_shots(footage):
    """The cluster-side code of ``--engine ray --window shots`` in this process (no Ray cluster): each
    window row carries its shot, the last one also the video's end and the number of shots; the
    driver turns them into records."""
    import numpy as np

    from stamcli.decode import ClipSpec
    from stamcli.ray_tasks import decode_task, path_table, read_windows
    from stamcli.timeline import ShotWindows

    read = functools.partial(read_windows, window_s=None, stride_s=None, shots=ShotWindows(max_shot_s=5))
    batches = list(decode_task({"id": np.array([0])}, paths=[path_table([str(footage)])], per_task=1,
                               spec=ClipSpec(4, 32, threads=1), read=read, chunk=20, folder=str(footage.parent)))
    (batch,) = batches
    assert batch["window"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and batch["ends"].tolist() == [False] * 7 + [True]
    assert batch["shot"].tolist() == [0, 1, 2, 2, 2, 3, 4, 5] and batch["shots"].tolist() == [-1] * 7 + [6]
    assert [(s, e) for s, e in zip(batch["start"].tolist(), batch["end"].tolist())] == [
        (w[1], w[2]) for w in SHOT_WINDOWS]
    assert batch["frame_count"].tolist()[-1] == 600
