"""collect_videos / parse_extensions / shard: PATH arguments -> the videos to process."""

from __future__ import annotations

import os

import pytest

from stamcli.errors import StamError
from stamcli.inputs import (
    DEFAULT_EXTENSIONS,
    collect_videos,
    natural_key,
    parse_extensions,
    parse_shard,
    shard,
)


def touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """videos/ with nested folders, hidden entries and non-videos; cwd = tmp_path."""
    touch(
        tmp_path / "videos",
        "b.mp4", "a.MOV", "clip10.mkv", "clip2.mkv", "notes.txt", "sub/c.avi", "sub/deep/d.webm",
        ".hidden.mp4", ".cache/e.mp4", "sub/.git/f.mp4",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folder_recursive_sorted_and_filtered(tree):
    assert collect_videos(["videos"]) == [
        "videos/a.MOV",
        "videos/b.mp4",
        "videos/clip2.mkv",  # natural order: 2 before 10
        "videos/clip10.mkv",
        "videos/sub/c.avi",
        "videos/sub/deep/d.webm",
    ]


def test_folder_not_recursive(tree):
    assert collect_videos(["videos"], recursive=False) == [
        "videos/a.MOV", "videos/b.mp4", "videos/clip2.mkv", "videos/clip10.mkv",
    ]


def test_absolute_folder_gives_absolute_paths(tree):
    out = collect_videos([str(tree / "videos" / "sub")])
    assert out == [str(tree / "videos/sub/c.avi"), str(tree / "videos/sub/deep/d.webm")]


def test_dot_folder_gives_bare_names(tree):
    os.chdir(tree / "videos" / "sub")
    assert collect_videos(["."]) == ["c.avi", "deep/d.webm"]


def test_folders_and_files_share_one_sorted_order(tmp_path, monkeypatch):
    touch(tmp_path / "v", "a/z.mp4", "a.mp4", "b/y.mp4", "B.mp4", "c.mp4")
    monkeypatch.chdir(tmp_path)
    assert collect_videos(["v"]) == ["v/a/z.mp4", "v/a.mp4", "v/b/y.mp4", "v/B.mp4", "v/c.mp4"]


def test_natural_key_is_total_and_deterministic():
    names = ["x10", "X2", "x2", "x02", "x1a", "y"]
    assert sorted(names, key=natural_key) == ["x1a", "X2", "x02", "x2", "x10", "y"]  # ties: exact name


def test_extension_filter(tree):
    assert collect_videos(["videos"], extensions=parse_extensions("mkv, .AVI")) == [
        "videos/clip2.mkv", "videos/clip10.mkv", "videos/sub/c.avi",
    ]


def test_parse_extensions():
    assert parse_extensions("mp4,.AVI, mkv") == ("mp4", "avi", "mkv")
    assert parse_extensions(" .Mp4 , mp4,,") == ("mp4",)
    with pytest.raises(StamError, match="--ext"):
        parse_extensions(" , . ,")
    assert "ts" in DEFAULT_EXTENSIONS and "mp4" in DEFAULT_EXTENSIONS


def test_explicit_file_with_odd_extension_is_kept(tree):
    assert collect_videos(["videos/notes.txt", "videos/.hidden.mp4"]) == [
        "videos/notes.txt", "videos/.hidden.mp4",
    ]


def test_glob_patterns(tree):
    assert collect_videos(["videos/*.mkv"]) == ["videos/clip2.mkv", "videos/clip10.mkv"]
    assert collect_videos(["videos/**/*.avi", "videos/**/*.webm"]) == [
        "videos/sub/c.avi", "videos/sub/deep/d.webm",
    ]
    # a glob matching a folder walks it; hidden entries are not matched by wildcards
    assert collect_videos(["vid*/sub"]) == ["videos/sub/c.avi", "videos/sub/deep/d.webm"]


def test_glob_no_match_is_an_error(tree):
    with pytest.raises(StamError, match=r"^no files match 'x/\*\.mp4'$"):
        collect_videos(["videos/b.mp4", "x/*.mp4"])


def test_list_file(tree):
    lists = tree / "lists"
    lists.mkdir()
    (lists / "todo.txt").write_text(
        "# videos to tag\n"
        "\n"
        "../videos/b.mp4\n"
        "   ../videos/sub   \n"
        "../videos/*.mkv\n"
        f"{tree / 'videos' / 'a.MOV'}\n"
        "local.mp4  \n"
        "# ../videos/notes.txt\n",
        encoding="utf-8",
    )
    assert collect_videos(["@lists/todo.txt"]) == [
        "lists/../videos/b.mp4",
        "lists/../videos/sub/c.avi",
        "lists/../videos/sub/deep/d.webm",
        "lists/../videos/clip2.mkv",
        "lists/../videos/clip10.mkv",
        str(tree / "videos" / "a.MOV"),
        "lists/local.mp4",  # missing: kept for a "file not found" record
    ]


def test_missing_list_file(tree):
    with pytest.raises(StamError, match="cannot read list file nope.txt"):
        collect_videos(["@nope.txt"])


def test_nonexistent_path_is_kept(tree):
    assert collect_videos(["missing.mp4", "videos/sub/deep"]) == ["missing.mp4", "videos/sub/deep/d.webm"]


def test_nothing_found_message(tree):
    (tree / "empty").mkdir()
    with pytest.raises(StamError) as err:
        collect_videos(["empty", "videos/sub"], extensions=("mp4", "mov"))
    assert str(err.value) == "no videos found in: empty, videos/sub (extensions: mp4, mov)"


def test_directory_named_like_a_video_is_kept(tree):
    (tree / "videos" / "sub" / "x.mp4").mkdir()
    touch(tree / "videos" / "sub" / "x.mp4", "inner.mp4")
    assert collect_videos(["videos/sub"]) == [
        "videos/sub/c.avi", "videos/sub/deep/d.webm", "videos/sub/x.mp4",
    ]


def test_symlink_loop_survived(tree):
    os.symlink("..", tree / "videos" / "sub" / "up")  # videos/sub/up -> videos
    os.symlink(".", tree / "videos" / "sub" / "deep" / "self")
    out = collect_videos(["videos"])
    assert out == [
        "videos/a.MOV", "videos/b.mp4", "videos/clip2.mkv", "videos/clip10.mkv",
        "videos/sub/c.avi", "videos/sub/deep/d.webm",
    ]


def test_symlinked_folder_is_followed(tree):
    os.symlink(tree / "videos" / "sub", tree / "link")
    assert collect_videos(["link"]) == ["link/c.avi", "link/deep/d.webm"]


def test_duplicates_removed_keeping_first(tree):
    out = collect_videos(["videos/sub/c.avi", "videos/sub", str(tree / "videos/sub/c.avi"), "videos/*/c.avi"])
    assert out == ["videos/sub/c.avi", "videos/sub/deep/d.webm"]


def test_shard():
    items = list(range(10))
    assert shard(items, "0/4") == [0, 4, 8]
    assert shard(items, "3/4") == [3, 7]
    assert shard(items, (1, 3)) == [1, 4, 7]
    assert shard(items, "0/1") == items
    parts = [shard(items, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == items


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    assert parse_shard(" 2 / 8 ") == (2, 8)
    for bad in ("4/4", "-1/4", "1/0", "1", "a/b", "1/4/2", ""):
        with pytest.raises(StamError, match=r"expected I/N with 0 <= I < N"):
            parse_shard(bad)
    with pytest.raises(StamError):
        shard([1, 2], (2, 2))
