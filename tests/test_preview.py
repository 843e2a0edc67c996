"""`stam predict --preview DIR`: one contact sheet per ok video, the model's frames and its labels."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from synthetic import write_empty, write_video
from stamcli.cli import app
from stamcli.preview import (
    BACKGROUND, MAX_NAME, ascii_text, contact_sheet, fit_text, preview_name, sheet_shape, tile_size,
)
from stamcli.decode import Clip, read_clip

runner = CliRunner()


def _frames(n: int, seed: int) -> list[np.ndarray]:
    base = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A working folder with v/a.mp4, v/sub/a.mp4 (same name), v/b.mp4 and a broken v/c.mp4."""
    (tmp_path / "v" / "sub").mkdir(parents=True)
    write_video(tmp_path / "v" / "a.mp4", _frames(12, 1))
    write_video(tmp_path / "v" / "sub" / "a.mp4", _frames(9, 2))
    write_video(tmp_path / "v" / "b.mp4", _frames(5, 3))
    write_empty(tmp_path / "v" / "c.mp4")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_sheet_per_ok_video_with_the_models_frames_and_labels(run_dir, tiny_checkpoint):
    result = runner.invoke(app, ["predict", "v", "-m", str(tiny_checkpoint), "-k", "3", "-o", "tags.jsonl",
                                 "--preview", "previews", "-q", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 1  # c.mp4 is empty
    names = sorted(os.listdir(run_dir / "previews"))
    assert names == ["v__a.mp4.png", "v__b.mp4.png", "v__sub__a.mp4.png"]  # same-name videos stay apart
    records = {r["path"]: r for r in map(json.loads, Path("tags.jsonl").read_text(encoding="utf-8").splitlines())}
    for name in ("v/a.mp4", "v/sub/a.mp4"):
        sheet = cv2.imread(str(run_dir / "previews" / preview_name(name)))
        # 4 frames of 32 px -> tiles of 128 in one row of 4; caption: title + 3 labels
        assert sheet.shape == (4 + 4 * 22 + 4 + 128 + 18 + 4, 4 + 4 * (128 + 4), 3) == (*sheet_shape(4, 32, 3), 3)
        caption = sheet[: 4 + 4 * 22]
        assert (caption != BACKGROUND).any(axis=2).sum() > 500  # text and score bars drawn
        clip = read_clip(name, 4, 32)
        top = 4 + 4 * 22 + 4
        for i in range(4):  # each tile is the model's input frame, enlarged 4x (nearest), RGB -> BGR
            x0 = 4 + i * 132
            tile = sheet[top : top + 128, x0 : x0 + 128]
            assert np.array_equal(tile[::4, ::4], clip.frames[i].numpy().transpose(1, 2, 0)[:, :, ::-1])
            strip = sheet[top + 128 : top + 146, x0 : x0 + 128]
            assert (strip != BACKGROUND).any()  # frame index and time under the tile
        assert records[name]["status"] == "ok"
    sheet = cv2.imread(str(run_dir / "previews" / "v__a.mp4.png"))
    with_labels = contact_sheet(read_clip("v/a.mp4", 4, 32), records["v/a.mp4"]["predictions"])
    assert np.array_equal(sheet, with_labels)  # exactly the labels and scores of the record


def test_sheets_reuse_the_decoded_clips(run_dir, tiny_checkpoint, monkeypatch):
    import stamcli.decode.clips as clips  # ClipSpec.read calls read_clip there

    decoded = []

    def spy(path, *args, **kwargs):
        decoded.append(path)
        return read_clip(path, *args, **kwargs)

    monkeypatch.setattr(clips, "read_clip", spy)
    result = runner.invoke(app, ["predict", "v/a.mp4", "v/b.mp4", "-m", str(tiny_checkpoint), "-o", "t.csv",
                                 "--preview", "p", "-q", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0
    assert decoded == ["v/a.mp4", "v/b.mp4"] and len(os.listdir("p")) == 2


def test_text_is_ascii_and_cut_to_fit():
    assert ascii_text('café "crème" 日本') == 'cafe "creme" ??'
    assert ascii_text("tab\there") == "tab?here"
    long = "eating, with a fork and a knife, very slowly, at a long table"
    cut = fit_text(long, 150)
    assert cut.endswith("...") and long.startswith(cut[:-3]) and cv2.getTextSize(cut, cv2.FONT_HERSHEY_SIMPLEX,
                                                                                0.5, 1)[0][0] <= 150
    assert fit_text("videos/deep/folder/clip.mp4", 100, keep_end=True).startswith("...")
    assert fit_text("short", 150) == "short"


def test_sheet_of_non_ascii_long_labels_and_many_frames(run_dir):
    clip = read_clip("v/a.mp4", 10, 32)
    predictions = [{"label": "défilé " * 20, "score": 0.5}, {"label": "日本", "score": 0.25}]
    sheet = contact_sheet(clip, predictions)
    assert sheet.shape == (*sheet_shape(10, 32, 2), 3) == (4 + 3 * 22 + 4 + 2 * (128 + 18 + 4), 4 + 8 * 132, 3)
    assert tile_size(224) == 224 and tile_size(100) == 200 and tile_size(32) == 128
    without = contact_sheet(clip, [{"label": "", "score": None}, {"label": "", "score": None}])
    assert (sheet[26:70] != without[26:70]).any(axis=2).sum() > 300  # the label lines hold drawn text


def test_preview_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert preview_name("videos/sub/a.mp4") == "videos__sub__a.mp4.png"
    assert preview_name("./a.mp4") == "a.mp4.png"
    assert preview_name(str(tmp_path / "x" / "a.mp4")) == "x__a.mp4.png"  # under the current folder
    outside = preview_name("/elsewhere/clips/a.mp4")
    assert outside == "elsewhere__clips__a.mp4.png"
    assert preview_name('what?.mp4') == "what_.mp4.png"
    long_a, long_b = preview_name("d" * 150 + "/a/" + "c" * 50 + ".mp4"), preview_name("e" * 150 + "/a/" + "c" * 50 + ".mp4")
    assert len(long_a) == MAX_NAME and long_a != long_b and long_a.endswith("c" * 50 + ".mp4.png")


def test_unwritable_preview_folder_is_one_line(run_dir, tiny_checkpoint):
    Path("blocked").write_text("a file, not a folder")
    result = runner.invoke(app, ["predict", "v/a.mp4", "-m", str(tiny_checkpoint), "--preview", "blocked/p", "-q",
                                 "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot create the preview folder blocked/p")


def test_a_sheet_that_cannot_be_written_is_one_line_error(run_dir, tiny_checkpoint):
    (run_dir / "p" / "v__a.mp4.png").mkdir(parents=True)  # a folder where the sheet should go
    result = runner.invoke(app, ["predict", "v/a.mp4", "v/b.mp4", "-m", str(tiny_checkpoint), "-o", "t.csv",
                                 "--preview", "p", "-q", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: cannot write preview p/v__a.mp4.png: Is a directory"
    assert sorted(os.listdir("p")) == ["v__a.mp4.png", "v__b.mp4.png"]  # no temporary file left


def test_a_sheet_of_test_time_views_shows_the_first_clips_centre_crop(run_dir):
    from stamcli.decode import read_views

    views = read_views("v/a.mp4", 4, 32, clips=2, crops=3)
    assert views.frames.shape == (6, 4, 3, 32, 32)
    sheet = contact_sheet(views, [{"label": "archery", "score": 0.5}])
    fields = {f.name: getattr(views, f.name) for f in dataclasses.fields(Clip)}
    plain = contact_sheet(Clip(**{**fields, "frames": views.frames[1], "indices": views.clip_indices(0)}),
                          [{"label": "archery", "score": 0.5}])
    assert sheet.shape == (*sheet_shape(4, 32, 1), 3)
    assert np.array_equal(sheet, plain)  # view 1 = clip 0, centre crop, with clip 0's frame numbers
