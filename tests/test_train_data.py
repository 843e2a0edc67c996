"""The fine-tuning data layer: labels files and class folders, checks, splits, augmentation,
read_clip's sampler/crop hooks, ClipDataset, and the synthetic temporal-order dataset."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stamcli.decode import read_clip, sample_indices
from stamcli.errors import StamError, VideoError
from stamcli.train.data import (ClipDataset, Example, Problem, check_classes, check_examples, class_names,
                                jittered_indices, random_resized_crop, read_examples, stratified_split, validate)
from synthetic import (MOTION_CLASSES, decode_clip_index, motion_frames, quadrant_colors, quadrant_frame,
                       write_index_video, write_motion_dataset, write_motion_video, write_raw_h264, write_text,
                       write_truncated, write_video, write_video_av)

ALL_FRAMES = lambda n, f: list(range(n))  # noqa: E731 - every frame, in order


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """One small valid video, copied wherever a test needs a good file."""
    return write_motion_video(tmp_path_factory.mktemp("clip") / "clip.mp4", "left", frames=8, size=32)


def _videos(folder: Path, clip: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, folder / name)


@pytest.fixture(scope="module")
def motion(tmp_path_factory) -> Path:
    return write_motion_dataset(tmp_path_factory.mktemp("motion"), per_class=3, seed=5)


# ---------------------------------------------------------------------------- reading


def test_csv_with_header_relative_paths_comments_and_spaces(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text(
        "\ufeffPath,Label\n"
        "# a comment\n"
        "\n"
        "clips/a.mp4,archery\n"
        "  clips/b.mp4 , playing guitar  \n"
        '"clips/c, d.mp4",baking\n'
        "/abs/e.mp4,3\n"
        "clips/f g.mp4 dancing\n"
        "clips/h.mp4\tdiving\n"
    )
    monkeypatch.chdir(tmp_path)  # relative to the labels file's folder, not the working directory
    examples = read_examples("data/labels.csv")
    assert [(e.path, e.label, e.source) for e in examples] == [
        (os.path.join("data", "clips/a.mp4"), "archery", "data/labels.csv:4"),
        (os.path.join("data", "clips/b.mp4"), "playing guitar", "data/labels.csv:5"),
        (os.path.join("data", "clips/c, d.mp4"), "baking", "data/labels.csv:6"),
        ("/abs/e.mp4", "3", "data/labels.csv:7"),
        (os.path.join("data", "clips/f g.mp4"), "dancing", "data/labels.csv:8"),
        (os.path.join("data", "clips/h.mp4"), "diving", "data/labels.csv:9"),
    ]


def test_csv_without_header_and_whitespace_form(tmp_path, clip_file):
    _videos(tmp_path, clip_file, "x.mp4", "my clip.mp4")
    (tmp_path / "list.txt").write_text("x.mp4 jump\nmy clip.mp4   run  \nlonely.mp4\n")
    examples = read_examples(tmp_path / "list.txt")
    assert [(Path(e.path).name, e.label, e.source.rsplit(":", 1)[1]) for e in examples] == [
        ("x.mp4", "jump", "1"), ("my clip.mp4", "run", "2"), ("lonely.mp4", "", "3")]
    # a first row naming an existing video is data, not a header
    (tmp_path / "noheader.csv").write_text("x.mp4,jump\nmy clip.mp4,run\n")
    assert [e.label for e in read_examples(tmp_path / "noheader.csv")] == ["jump", "run"]


def test_other_header_names_are_detected_when_the_rows_exist(tmp_path, clip_file):
    _videos(tmp_path, clip_file, "x.mp4")
    (tmp_path / "a.csv").write_text("video,class\nx.mp4,jump\n")
    assert [(Path(e.path).name, e.label) for e in read_examples(tmp_path / "a.csv")] == [("x.mp4", "jump")]
    # when no row exists the first row is kept (and will be reported as a missing file)
    (tmp_path / "b.csv").write_text("video,class\nmissing.mp4,jump\n")
    assert [e.label for e in read_examples(tmp_path / "b.csv")] == ["class", "jump"]


def test_folder_of_class_folders(tmp_path, clip_file):
    root = tmp_path / "root"
    _videos(root, clip_file, "walk/a.mp4", "walk/deeper/b.avi", "walk/notes.txt", "run/c10.mkv", "run/c2.mkv",
            ".hidden/d.mp4", "walk/.e.mp4", "loose.mp4")
    (root / "labels.csv").write_text("path,label\n")
    (root / "empty").mkdir()
    examples = read_examples(root)
    assert [(os.path.relpath(e.path, root), e.label, e.source) for e in examples] == [
        ("run/c2.mkv", "run", str(root / "run")),
        ("run/c10.mkv", "run", str(root / "run")),
        ("walk/a.mp4", "walk", str(root / "walk")),
        ("walk/deeper/b.avi", "walk", str(root / "walk")),
    ]


def test_reading_errors(tmp_path, clip_file):
    with pytest.raises(StamError, match="no such file or folder"):
        read_examples(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("path,label\n# nothing\n\n")
    with pytest.raises(StamError, match="no examples in"):
        read_examples(tmp_path / "empty.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(StamError, match="no videos in class folders"):
        read_examples(tmp_path / "folder")
    with pytest.raises(StamError, match="is a video"):
        read_examples(clip_file)


def test_class_names():
    ex = lambda *labels: [Example(f"{i}.mp4", label, "x") for i, label in enumerate(labels)]  # noqa: E731
    assert class_names(ex("10", "2", "1", "2", "-3")) == ["-3", "1", "2", "10"]
    assert class_names(ex("b", "10", "a", "2")) == ["10", "2", "a", "b"]
    assert class_names(ex("walk", "", "run")) == ["run", "walk"]


# ---------------------------------------------------------------------------- checking


@pytest.fixture
def messy(tmp_path, clip_file):
    """train.csv and val.csv with one of every problem (line numbers in the comments)."""
    _videos(tmp_path, clip_file, "good.mp4", "nolabel.mp4", "g3.mp4", "v1.mp4", "v2.mp4", "v3.mp4", "solo.mp4")
    write_text(tmp_path / "text.mp4")
    (tmp_path / "sub").mkdir()
    (tmp_path / "train.csv").write_text(
        "path,label\n"        # 1
        "good.mp4,a\n"        # 2 fine
        "missing.mp4,a\n"     # 3 no such file
        "nolabel.mp4,\n"      # 4 no label
        "text.mp4,b\n"        # 5 unreadable (and b's only training example)
        "./good.mp4,a\n"      # 6 listed twice
        "g3.mp4,c\n"          # 7 listed with different labels
        "g3.mp4,d\n"          # 8 listed with different labels
        "sub,a\n"             # 9 a folder
    )
    (tmp_path / "val.csv").write_text("v1.mp4 b\nv2.mp4 a\nv3.mp4 z\n")
    return read_examples(tmp_path / "train.csv"), read_examples(tmp_path / "val.csv")


def _lines(problems) -> list[tuple[str, str]]:
    return [(os.path.basename(p.source), p.message.split(" (")[0].split(":")[0]) for p in problems]


def test_check_examples_finds_every_kind(messy):
    train, _ = messy
    problems = check_examples(train)
    assert _lines(problems) == [
        ("train.csv:3", "no such file"),
        ("train.csv:4", "no label"),
        ("train.csv:5", "unreadable video"),
        ("train.csv:6", "listed twice"),
        ("train.csv:7", "listed with different labels"),
        ("train.csv:8", "listed with different labels"),
        ("train.csv:9", "is a folder, not a video"),
    ]
    assert "train.csv:2" in problems[3].message  # the repeat names the first occurrence
    assert "train.csv:7 (c)" in problems[4].message and "train.csv:8 (d)" in problems[4].message
    assert all(isinstance(p, Problem) and p.path for p in problems)
    assert str(problems[0]) == f"{problems[0].source}: {problems[0].path}: no such file"
    # without decoding, the text file passes
    assert ("train.csv:5", "unreadable video") not in _lines(check_examples(train, decode=False))


def test_check_classes():
    t = [Example("a1", "a", "t:1"), Example("a2", "a", "t:2"), Example("b1", "b", "t:3")]
    v = [Example("v1", "a", "v:1"), Example("v2", "c", "v:2")]
    assert check_classes(t, v) == [Problem("v:2", "v2", "class 'c' has no usable training examples")]
    split = check_classes(t, None)
    assert [(p.source, p.path) for p in split] == [("t:3", "b1")] and "at least 2" in split[0].message


def test_validate_reports_all_problems_at_once(messy):
    train, val = messy
    with pytest.raises(StamError) as info:
        validate(train, val, skip_bad=False)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("9 problems in ") and "train.csv and " in lines[0]
    assert lines[0].endswith("val.csv (use --skip-bad to drop them):")
    assert len(lines) == 10
    assert [line.split(": ")[0].rsplit("/", 1)[-1] for line in lines[1:]] == [
        "train.csv:3", "train.csv:4", "train.csv:5", "train.csv:6", "train.csv:7", "train.csv:8", "train.csv:9",
        "val.csv:1", "val.csv:3"]
    assert lines[8].endswith("v1.mp4: class 'b' has no usable training examples")
    assert lines[9].endswith("v3.mp4: class 'z' has no usable training examples")


def test_validate_skip_bad_drops_exactly_the_bad_ones(messy, caplog):
    train, val = messy
    with caplog.at_level(logging.WARNING, logger="stamcli"):
        kept_train, kept_val = validate(train, val, skip_bad=True)
    assert [e.source.rsplit("/", 1)[-1] for e in kept_train] == ["train.csv:2"]
    assert [e.source.rsplit("/", 1)[-1] for e in kept_val] == ["val.csv:2"]
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipping ")]
    assert len(skipped) == 9 and all(r.levelno == logging.WARNING for r in skipped)
    assert any("dropped 9 of 11 examples" in r.getMessage() for r in caplog.records)


def test_validate_clean_data_and_split_check(tmp_path, clip_file):
    _videos(tmp_path, clip_file, "a1.mp4", "a2.mp4", "b1.mp4")
    (tmp_path / "d.csv").write_text("a1.mp4,a\na2.mp4,a\nb1.mp4,b\n")
    examples = read_examples(tmp_path / "d.csv")
    assert validate(examples, skip_bad=False) == examples  # one list in, one list out
    assert validate(examples, [], skip_bad=False) == (examples, [])
    with pytest.raises(StamError) as info:
        validate(examples, skip_bad=False, split=True)
    assert str(info.value).splitlines()[0].startswith("1 problem in ")
    assert "(use --skip-bad to drop it):" in str(info.value)
    assert str(info.value).splitlines()[1].endswith("b1.mp4: class 'b' has only 1 usable example: a validation "
                                                    "split needs at least 2 per class (or give --val)")
    assert validate(examples, skip_bad=True, split=True) == examples[:2]


def test_a_video_in_both_train_and_val_is_a_repeat(tmp_path, clip_file):
    _videos(tmp_path, clip_file, "a.mp4", "b.mp4")
    (tmp_path / "t.csv").write_text("a.mp4,x\nb.mp4,x\n")
    (tmp_path / "v.csv").write_text("a.mp4,x\n")
    train, val = read_examples(tmp_path / "t.csv"), read_examples(tmp_path / "v.csv")
    problems = check_examples(train + val)
    assert [(os.path.basename(p.source), p.message) for p in problems] == [
        ("v.csv:1", f"listed twice (also at {tmp_path / 't.csv'}:1)")]


# ---------------------------------------------------------------------------- splitting


def _labelled(counts: dict[str, int]) -> list[Example]:
    out = []
    for label, count in counts.items():
        out += [Example(f"{label}{i}.mp4", label, f"d.csv:{len(out) + 1}") for i in range(count)]
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.permutation(len(out))]  # classes interleaved


def test_stratified_split_sizes_determinism_and_disjointness():
    examples = _labelled({"a": 20, "b": 5, "c": 1, "d": 25, "e": 2})
    train, held = stratified_split(examples, 0.1, seed=3)
    per_class = {label: sum(e.label == label for e in held) for label in "abcde"}
    assert per_class == {"a": 2, "b": 1, "c": 0, "d": 3, "e": 1}
    assert not set(train) & set(held) and len(train) + len(held) == len(examples)
    assert [e for e in examples if e in set(train)] == train  # input order kept
    assert [e for e in examples if e in set(held)] == held
    assert stratified_split(examples, 0.1, seed=3) == (train, held)
    others = [stratified_split(examples, 0.1, seed=s)[1] for s in range(4, 9)]
    assert any(set(o) != set(held) for o in others)
    # a class's choice does not depend on the other classes
    only_a = [e for e in examples if e.label == "a"]
    assert stratified_split(only_a, 0.1, seed=3)[1] == [e for e in held if e.label == "a"]
    assert stratified_split(examples, 0.0) == (examples, [])
    assert len(stratified_split(examples, 0.5)[1]) == 10 + 3 + 0 + 13 + 1
    with pytest.raises(ValueError):
        stratified_split(examples, 1.0)


# ---------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("n,f", [(100, 8), (16, 8), (9, 8), (8, 8), (301, 16)])
def test_jittered_indices_stay_in_their_segments(n, f):
    seen = set()
    for seed in range(60):
        indices = jittered_indices(n, f, np.random.default_rng(seed))
        assert len(indices) == f
        for i, k in enumerate(indices):
            assert i * n <= k * f < (i + 1) * n, (i, k)
        seen.add(tuple(indices))
    assert len(seen) > (1 if n > f else 0)
    assert (len(seen) == 1) == (n == f)
    if n == 16:  # both frames of each 2-frame segment turn up
        assert {k for s in seen for k in s} == set(range(16))


def test_jittered_indices_short_video():
    assert jittered_indices(5, 8, np.random.default_rng(0)) == sample_indices(5, 8) == [0, 0, 1, 2, 2, 3, 4, 4]
    with pytest.raises(ValueError):
        jittered_indices(0, 8, np.random.default_rng(0))


@pytest.mark.parametrize("hw", [(240, 320), (320, 240), (100, 100), (48, 64)])
def test_random_resized_crop_bounds_area_and_ratio(hw):
    h, w = hw
    regions = set()
    for seed in range(200):
        top, left, ch, cw = random_resized_crop(np.random.default_rng(seed))(h, w)
        assert 0 <= top and 0 <= left and 1 <= ch and 1 <= cw and top + ch <= h and left + cw <= w
        tol = (ch + cw) / (h * w)  # rounding of the sides
        assert 0.5 - tol <= ch * cw / (h * w) <= 1.0
        assert 3 / 4 - 1 / min(ch, cw) <= cw / ch <= 4 / 3 + 1 / min(ch, cw)
        regions.add((top, left, ch, cw))
    assert len(regions) > 150


def test_random_resized_crop_falls_back_to_a_centre_crop():
    assert random_resized_crop(np.random.default_rng(0))(10, 1000) == (0, 493, 10, 13)
    assert random_resized_crop(np.random.default_rng(0))(1000, 10) == (493, 0, 13, 10)
    # an impossible scale: the whole frame (already within the ratio)
    assert random_resized_crop(np.random.default_rng(0), scale=(2.0, 3.0))(90, 100) == (0, 0, 90, 100)


# ---------------------------------------------------------------------------- read_clip hooks


def test_read_clip_sampler_gives_exactly_those_frames(tmp_path):
    path = write_index_video(tmp_path / "i.mp4", 30, 48, 64)
    calls = []

    def sampler(n, f):
        calls.append((n, f))
        return [29, 0, 7, 7, 15]

    clip = read_clip(path, 5, 32, sampler=sampler)
    assert calls == [(30, 5)]
    assert clip.indices == [29, 0, 7, 7, 15]
    assert [decode_clip_index(frame) for frame in clip.frames] == [29, 0, 7, 7, 15]
    for bad in ([30, 0, 0, 0, 0], [-1, 0, 0, 0, 0], [0, 1]):
        with pytest.raises(ValueError, match="sampler gave"):
            read_clip(path, 5, 32, sampler=lambda n, f, bad=bad: bad)


@pytest.mark.parametrize("decoder", ["opencv", "auto"])
def test_read_clip_sampler_is_used_after_a_lying_header(tmp_path, decoder):
    """OpenCV plans from the header's 60 frames and asks again with the real count; PyAV's
    count is exact, so it asks once."""
    full = write_index_video(tmp_path / "t60.avi", 60, 48, 64, fourcc="MJPG")
    path = write_truncated(full, tmp_path / "t60_cut.avi", 0.6)
    calls = []

    def sampler(n, f):
        calls.append(n)
        return [n - 2, 0, n // 2]

    clip = read_clip(path, 3, 32, sampler=sampler, decoder=decoder)
    real = clip.frame_count
    assert 0 < real < 60 and calls == ([60, real] if decoder == "opencv" else [real])
    assert clip.decoder == ("opencv" if decoder == "opencv" else "pyav")
    assert clip.indices == [real - 2, 0, real // 2]
    assert [decode_clip_index(frame) for frame in clip.frames] == clip.indices


def test_read_clip_crop_returns_the_region(tmp_path):
    path = write_video(tmp_path / "q.avi", [quadrant_frame(48, 64)] * 3, fourcc="MJPG")
    calls = []

    def crop(h, w):
        calls.append((h, w))
        return 0, 0, 24, 32  # the top-left quadrant

    clip = read_clip(path, 3, 16, crop=crop)
    assert calls == [(48, 64)]  # once per clip, with the frame size
    assert clip.frames.shape == (3, 3, 16, 16) and clip.frames.dtype == torch.uint8
    assert all(quadrant_colors(f) == ("red",) * 4 for f in clip.frames)
    bottom = read_clip(path, 1, 16, crop=lambda h, w: (24, 0, 24, 64)).frames[0]
    assert quadrant_colors(bottom) == ("blue", "white", "blue", "white")
    full = read_clip(path, 1, 32, crop=lambda h, w: (0, 0, h, w)).frames[0]
    assert quadrant_colors(full) == ("red", "green", "blue", "white")
    # the whole 48x64 frame squeezed to 32x32: the quadrant edges land on the middle row and column
    near = lambda pixel, rgb: (pixel.int() - torch.tensor(rgb)).abs().max() <= 8  # noqa: E731 - MJPEG noise
    assert near(full[:, 13, 14], [255, 0, 0]) and near(full[:, 13, 17], [0, 255, 0])
    assert near(full[:, 18, 14], [0, 0, 255]) and near(full[:, 18, 17], [255, 255, 255])
    assert 0 < full[0, 8, 15] < 255 and 0 < full[1, 8, 16] < 255  # the edge between columns 15 and 16
    with pytest.raises(ValueError, match="not inside"):
        read_clip(path, 1, 16, crop=lambda h, w: (1, 0, h, w))


def test_read_clip_crop_sees_the_upright_frame(tmp_path):
    path = write_video_av(tmp_path / "rot.mp4", [quadrant_frame(48, 64)] * 3, codec="libx264", rotation=90)
    upright = read_clip(path, 1, 32)
    sizes = []

    def top_left(h, w):
        sizes.append((h, w))
        return 0, 0, h // 2, w // 2

    region = read_clip(path, 1, 16, crop=top_left).frames[0]
    assert sizes == [(upright.height, upright.width)] == [(64, 48)]
    assert quadrant_colors(region) == (quadrant_colors(upright.frames[0])[0],) * 4


# ---------------------------------------------------------------------------- ClipDataset


def test_clip_dataset_train_is_a_function_of_seed_epoch_and_index(motion):
    examples = read_examples(motion / "labels.csv")[:4]
    index = {c: i for i, c in enumerate(class_names(examples))}
    a = ClipDataset(examples, index, 8, 32, train=True, seed=7)
    b = ClipDataset(examples, index, 8, 32, train=True, seed=7)
    assert len(a) == 4
    frames, label = a[1]
    assert frames.shape == (8, 3, 32, 32) and frames.dtype == torch.uint8 and label == index[examples[1].label]
    b[0]  # other samples loaded first, in another order, do not matter
    assert torch.equal(b[1][0], frames) and torch.equal(a[-3][0], frames)
    a.set_epoch(1)
    assert not torch.equal(a[1][0], frames)
    b.set_epoch(1)
    assert torch.equal(a[1][0], b[1][0])
    c = ClipDataset(examples, index, 8, 32, train=True, seed=8)
    assert not torch.equal(c[1][0], frames)
    with pytest.raises(IndexError):
        a[4]


def test_clip_dataset_eval_is_prediction_preprocessing(motion):
    examples = read_examples(motion)[:3]
    index = {c: i for i, c in enumerate(MOTION_CLASSES)}
    dataset = ClipDataset(examples, index, 8, 48, train=False, seed=3)
    for i, e in enumerate(examples):
        frames, label = dataset[i]
        assert torch.equal(frames, read_clip(e.path, 8, 48).frames) and label == index[e.label]
    dataset.set_epoch(5)
    assert torch.equal(dataset[0][0], read_clip(examples[0].path, 8, 48).frames)


def test_clip_dataset_hflip(motion):
    examples = read_examples(motion / "labels.csv")[:8]
    index = {c: i for i, c in enumerate(MOTION_CLASSES)}
    plain = ClipDataset(examples, index, 4, 32, train=True)
    flipping = ClipDataset(examples, index, 4, 32, train=True, hflip=True)
    flipped = []
    for i in range(len(examples)):
        p, f = plain[i][0], flipping[i][0]
        assert torch.equal(f, p) or torch.equal(f, p.flip(-1))
        flipped.append(not torch.equal(f, p))
    assert 0 < sum(flipped) < len(flipped)


def test_clip_dataset_errors(tmp_path, clip_file):
    write_text(tmp_path / "bad.mp4")
    examples = [Example(str(tmp_path / "bad.mp4"), "a", "x:1")]
    with pytest.raises(VideoError):
        ClipDataset(examples, {"a": 0}, 4, 32, train=True)[0]
    with pytest.raises(StamError, match="labels without a class index: a"):
        ClipDataset(examples, {"b": 0}, 4, 32, train=False)



def test_the_decoder_reads_the_clips_and_checks_the_data(tmp_path):
    """A raw H.264 stream: OpenCV reads it, PyAV alone cannot (no timestamps)."""
    raw = write_raw_h264(tmp_path / "raw.h264", 40)
    examples = [Example(str(raw), "a", "x:1")]
    for train in (True, False):
        frames, target = ClipDataset(examples, {"a": 0}, 4, 32, train=train, decoder="auto")[0]
        assert frames.shape == (4, 3, 32, 32) and target == 0
        with pytest.raises(VideoError, match="PyAV cannot read it exactly"):
            ClipDataset(examples, {"a": 0}, 4, 32, train=train, decoder="pyav")[0]
    assert check_examples(examples, decoder="opencv") == []
    (problem,) = check_examples(examples, decoder="pyav")
    assert problem.message.startswith("unreadable video: PyAV cannot read it exactly (a packet without a timestamp)")
    assert validate(examples, skip_bad=True, decoder="pyav") == [] and validate(examples, skip_bad=True) == examples


# ---------------------------------------------------------------------------- the motion dataset


def test_motion_dataset_layout_and_labels(motion):
    from_csv = read_examples(motion / "labels.csv")
    assert len(from_csv) == 6 * 3
    assert class_names(from_csv) == sorted(MOTION_CLASSES)
    assert [Path(e.path).relative_to(motion).as_posix() for e in from_csv[:4]] == [
        "left/left_0.avi", "left/left_1.avi", "left/left_2.avi", "right/right_0.avi"]
    assert all(Path(e.path).parent.name == e.label for e in from_csv)
    from_folder = read_examples(motion)
    assert sorted((Path(e.path).resolve(), e.label) for e in from_folder) == \
        sorted((Path(e.path).resolve(), e.label) for e in from_csv)
    assert check_examples(from_csv) == []


@pytest.mark.parametrize("forward,backward", [("left", "right"), ("up", "down"), ("grow", "shrink")])
def test_motion_pairs_hold_the_same_frames_in_reverse(motion, forward, backward):
    a = read_clip(motion / forward / f"{forward}_1.avi", 16, 48, sampler=ALL_FRAMES).frames.float()
    b = read_clip(motion / backward / f"{backward}_1.avi", 16, 48, sampler=ALL_FRAMES).frames.float()
    reversed_diff = (a.flip(0) - b).abs().mean(dim=(1, 2, 3))
    same_order_diff = (a - b).abs().mean(dim=(1, 2, 3))
    assert reversed_diff.max() < 4.0  # codec noise only
    assert same_order_diff.mean() > 3 * reversed_diff.mean() + 5


def _centre_and_size(frame: np.ndarray) -> tuple[float, float, int]:
    mask = frame.max(axis=2) > 100
    ys, xs = np.nonzero(mask)
    return ys.mean(), xs.mean(), int(mask.sum())


def test_motion_frames_move_the_right_way():
    for kind, check in [("left", lambda a, b: b[1] < a[1] - 15 and abs(b[0] - a[0]) < 1),
                        ("right", lambda a, b: b[1] > a[1] + 15 and abs(b[0] - a[0]) < 1),
                        ("up", lambda a, b: b[0] < a[0] - 15 and abs(b[1] - a[1]) < 1),
                        ("down", lambda a, b: b[0] > a[0] + 15 and abs(b[1] - a[1]) < 1),
                        ("grow", lambda a, b: b[2] > 10 * a[2]),
                        ("shrink", lambda a, b: a[2] > 10 * b[2])]:
        for seed in range(5):
            frames = motion_frames(kind, 16, 48, seed)
            assert len(frames) == 16 and frames[0].shape == (48, 48, 3) and frames[0].dtype == np.uint8
            first, last = _centre_and_size(frames[0]), _centre_and_size(frames[-1])
            assert check(first, last), (kind, seed, first, last)
    assert not np.array_equal(motion_frames("left", seed=0)[0], motion_frames("left", seed=1)[0])
    with pytest.raises(ValueError):
        motion_frames("sideways")
