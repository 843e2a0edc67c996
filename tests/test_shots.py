"""Shots: detection on generated videos with known cuts (stamcli.shots), and shot windows (timeline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic import ShotSpec, write_shot_video, write_text
from stamcli.errors import UsageError, VideoError
from stamcli.shots import FLASH_S, Shot, ShotDetector, ShotOptions, detect_shots, shots_from_cuts
from stamcli.timeline import Window, plan_shot_windows, segments

FPS = 25


def starts(shots) -> list[int]:
    return [s.start for s in shots]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    """Generated 160x90 H.264 videos at 25 fps and where their shots change."""
    root = tmp_path_factory.mktemp("shots")
    specs = {
        # hard cuts: colours, same-mean-grey textures, inside a fast pan, dark low-contrast; 2 s shots
        "cuts": (ShotSpec("red", 75), ShotSpec("green", 50), ShotSpec("grey_stripes", 50), ShotSpec("grey_checker", 50),
                 ShotSpec("pan_a", 50), ShotSpec("pan_b", 50), ShotSpec("dark_a", 60), ShotSpec("dark_b", 60)),
        # a 2 s cross-dissolve and a 2 s fade through black, then a hard cut
        "fades": (ShotSpec("red", 100), ShotSpec("blue", 100, dissolve=50),
                  ShotSpec("green", 100, dissolve=50, through_black=True), ShotSpec("yellow", 60)),
        # flashes inside a shot; an 8-frame insert (shorter than 0.5 s); a 6-frame last shot
        "short": (ShotSpec("grey_blobs", 60, flashes=(30, 31)), ShotSpec("yellow", 8), ShotSpec("blue", 60),
                  ShotSpec("red", 6)),
    }
    return {name: (write_shot_video(root / f"{name}.mp4", spec, fps=FPS, height=90, width=160), root / f"{name}.mp4")
            for name, spec in specs.items()}


# ---------------------------------------------------------------------------- pure


def test_shots_from_cuts():
    assert [(s.start, s.end) for s in shots_from_cuts([50, 20, 20, 0, 100, 130], 100, 25)] == [(0, 20), (20, 50),
                                                                                             (50, 100)]
    assert shots_from_cuts([30], 100, 25)[1] == Shot(1, 30, 100, 25) and Shot(1, 30, 100, 25).start_s == 1.2
    # cuts closer than min_frames to the cut before, or to the end, are left out
    assert starts(shots_from_cuts([10, 20, 28, 95], 100, 25, min_frames=12)) == [0, 20]
    assert starts(shots_from_cuts([5], 100, 25, min_frames=12)) == [0]
    assert shots_from_cuts([], 0, 25) == [] and starts(shots_from_cuts([], 7, 25)) == [0]


def test_plan_shot_windows_cuts_long_shots_into_equal_parts():
    shots = shots_from_cuts([40, 290], 300, 10)  # 4 s, 25 s and 1 s at 10 fps
    windows = plan_shot_windows(shots, max_shot_s=10)
    assert [(w.index, w.start, w.end, w.shot) for w in windows] == [
        (0, 0, 40, 0), (1, 40, 123, 1), (2, 123, 206, 1), (3, 206, 290, 1), (4, 290, 300, 2)]
    assert windows[1] == Window(1, 40, 123, 10, 1) and windows[1].start_s == 4.0 and windows[3].end_s == 29.0
    assert [(w.start, w.end) for w in plan_shot_windows(shots, max_shot_s=None)] == [(0, 40), (40, 290), (290, 300)]
    assert len(plan_shot_windows(shots_from_cuts([], 100, 10), max_shot_s=10)) == 1  # exactly the maximum: one
    assert len(plan_shot_windows(shots_from_cuts([], 101, 10), max_shot_s=10)) == 2
    with pytest.raises(UsageError, match="--max-shot must be a number of seconds greater than 0, got 0"):
        plan_shot_windows(shots, max_shot_s=0)


def test_windows_that_do_not_overlap_own_their_own_span():
    shot_spans = [(0.0, 2.0), (2.0, 10.0), (10.0, 10.4)]
    assert segments(shot_spans, 10.4) == shot_spans  # not the midpoints of the centres (3.5 and 8.1)
    assert segments([(0, 4), (4, 8), (8, 9)], 9.0) == [(0, 4), (4, 8), (8, 9)]  # back-to-back windows, short tail
    # overlapping windows of equal length still part at the midpoint of their centres
    assert segments([(0, 2), (1.5, 3.5), (3, 5), (4.5, 6)], 6.0) == [(0, 1.75), (1.75, 3.25), (3.25, 4.625),
                                                                      (4.625, 6.0)]


def test_shot_options_are_checked():
    with pytest.raises(UsageError, match="unknown shot detector 'fast': choose one of adaptive, content"):
        ShotDetector(25, ShotOptions(detector="fast"))
    with pytest.raises(UsageError, match="threshold must be a number greater than 0, got -1"):
        ShotDetector(25, ShotOptions(threshold=-1))
    with pytest.raises(VideoError, match="frame rate"):
        ShotDetector(0, ShotOptions())


# ---------------------------------------------------------------------------- detection


@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_hard_cuts_are_found_on_their_frame(videos, decoder):
    truth, path = videos["cuts"]
    found = detect_shots(path, decoder=decoder)
    assert found.decoder == ("pyav" if decoder == "auto" else "opencv")
    assert found.frame_count == truth.frames == 445 and found.fps == FPS
    assert starts(found.shots) == [0, *truth.cuts] == [0, 75, 125, 175, 225, 275, 325, 385]
    assert found.shots[-1].end == 445 and found.shots[3].start_s == 7.0 and found.shots[3].end_s == 9.0


def test_gradual_transitions_give_at_most_one_cut_each(videos):
    truth, path = videos["fades"]
    cuts = starts(detect_shots(path).shots)[1:]
    assert truth.fades == ((50, 100), (150, 200)) and truth.cuts == (300,)
    assert 300 in cuts
    for a, b in truth.fades:
        assert len([c for c in cuts if a - 1 <= c <= b + 1]) <= 1
    assert all(c == 300 or any(a - 1 <= c <= b + 1 for a, b in truth.fades) for c in cuts)


def test_flashes_and_too_short_shots_are_not_shots(videos):
    truth, path = videos["short"]
    assert truth.cuts == (60, 68, 128)
    detector = ShotDetector(FPS)
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            detector.push(frame.to_ndarray(format="bgr24"))
    shots = detector.shots()
    # the flash at 30-31 is no cut; the 8-frame insert joins the shot after it; the 6-frame end the shot before
    assert [(s.start, s.end) for s in shots] == [(0, 60), (60, 134)]
    assert detector.flashes == [30] and FLASH_S * FPS >= 2


def test_unreadable_files_are_one_line_errors(tmp_path):
    bad = write_text(tmp_path / "notes.mp4")
    with pytest.raises(VideoError, match=r"^cannot read video .*notes\.mp4: ") as err:
        detect_shots(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(VideoError):
        detect_shots(Path(tmp_path / "missing.mp4"))


@pytest.mark.parametrize("name", ["cuts", "fades", "short"])
def test_the_one_pass_reader_hands_on_the_shots_that_detection_alone_finds(videos, name):
    from stamcli.timeline import ShotWindows, TimelineReader, plan_shot_windows

    _, path = videos[name]
    alone = detect_shots(path)
    reader = TimelineReader(path, 4, 32, None, shots=ShotWindows(max_shot_s=None), decoder="auto")
    got = [(w.index, w.start, w.end, w.shot) for w, _ in reader]
    # shots handed on while the video is still being read are never moved by what comes after
    assert got == [(w.index, w.start, w.end, w.shot) for w in plan_shot_windows(alone.shots, None)]
    assert reader.shot_list.shots == alone.shots and reader.reread == 0
