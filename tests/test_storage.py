"""Object storage and URLs as inputs and outputs, against real servers on 127.0.0.1: moto's S3 server
(``s3`` fixture in conftest) and HTTP servers. Every test here fails if anything connects to an
address that is not loopback (botocore must not reach an instance-metadata service, for one)."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import http_server
from synthetic import write_index_video
from stamcli.cli import app
from stamcli.errors import StamError, UsageError
from stamcli.inputs import collect_videos
from stamcli.storage import abort_downloads, is_url, local_copy, max_download_bytes, parse_size, read_input, url_scheme
from stamcli.writers import read_records

runner = CliRunner()

# ---------------------------------------------------------------------------- no address but loopback

_connections: list = []  # (address) of every socket connect while a test of this module runs
_watching = [False]


def _audit(event: str, args) -> None:
    if _watching[0] and event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple):
            _connections.append(address[0])


sys.addaudithook(_audit)  # process-wide and permanent, hence the switch


@pytest.fixture(autouse=True)
def only_loopback():
    _connections.clear()
    _watching[0] = True
    yield
    _watching[0] = False
    outside = sorted({host for host in _connections if host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")})
    assert not outside, f"connected to non-loopback addresses: {outside}"


# ---------------------------------------------------------------------------- videos

VIDEOS = ["a.mp4", "clip2.mp4", "Clip3.MP4", "clip10.mp4", "sub/b.avi", "sub/deeper/c.mp4"]  # in listing order


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A local folder of videos plus things a listing must skip (hidden entries, other extensions)."""
    root = tmp_path_factory.mktemp("tree")
    for i, name in enumerate(VIDEOS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_index_video(root / name, 6 + i, fourcc="MJPG" if name.endswith(".avi") else "mp4v")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.mp4").write_bytes(b"never listed")
    (root / ".h.mp4").write_bytes(b"never listed")
    (root / "notes.txt").write_text("not a video")
    return root


def _upload(client, bucket: str, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(root).as_posix()}", Body=path.read_bytes())


@pytest.fixture
def bucket_tree(s3, tree):
    """``tree`` uploaded under ``videos/`` of the test's bucket, with a folder marker and an object elsewhere."""
    client, bucket = s3
    _upload(client, bucket, tree, "videos")
    client.put_object(Bucket=bucket, Key="videos/sub/", Body=b"")  # the zero-byte "folder" some tools make
    client.put_object(Bucket=bucket, Key="other/z.mp4", Body=b"not a real video")
    return client, bucket


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)], catch_exceptions=False)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _same_results(remote: dict, local: dict) -> None:
    """Equal records but for the path (scores to float32 noise: batches may run on other thread counts)."""
    assert [p["score"] for p in remote["predictions"]] == pytest.approx([p["score"] for p in local["predictions"]],
                                                                        abs=1e-6)
    strip = lambda r: {**r, "path": None, "predictions": [{**p, "score": None} for p in r["predictions"]]}  # noqa: E731
    assert strip(remote) == strip(local)


@pytest.fixture
def download_dir(tmp_path, monkeypatch) -> Path:
    """The temporary folder downloads go to, its modification time set in the past (a download changes it)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    os.utime(folder, ns=(0, 0))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# ---------------------------------------------------------------------------- listing


def test_urls_are_told_from_paths():
    assert url_scheme("S3://b/k") == "s3" and url_scheme("C:/videos/a.mp4") is None and url_scheme("a.mp4") is None
    assert is_url("gs://b/k") and is_url("az://c/k") and is_url("https://h/a.mp4") and not is_url("/x/s3://y")
    with pytest.raises(UsageError, match="unsupported URL ftp://h/a.mp4"):
        is_url("ftp://h/a.mp4")
    assert parse_size("1536") == 1536 and parse_size("1.5K") == 1536 and parse_size("2GiB") == 2 << 30
    with pytest.raises(ValueError):
        parse_size("lots")


def test_a_prefix_is_listed_like_a_local_folder(bucket_tree, tree):
    _, bucket = bucket_tree
    local = [Path(p).relative_to(tree).as_posix() for p in collect_videos([str(tree)])]
    assert local == VIDEOS
    for url in (f"s3://{bucket}/videos/", f"s3://{bucket}/videos"):  # with or without the slash
        assert collect_videos([url]) == [f"s3://{bucket}/videos/{name}" for name in VIDEOS]
    assert collect_videos([f"s3://{bucket}/videos/"], recursive=False) == [
        f"s3://{bucket}/videos/{name}" for name in VIDEOS if "/" not in name]
    assert collect_videos([f"s3://{bucket}/videos/"], extensions=("avi",)) == [f"s3://{bucket}/videos/sub/b.avi"]
    assert collect_videos([f"s3://{bucket}"]) == [f"s3://{bucket}/other/z.mp4"] + [
        f"s3://{bucket}/videos/{name}" for name in VIDEOS]  # a whole bucket


def test_objects_globs_and_lists(bucket_tree, tmp_path):
    _, bucket = bucket_tree
    base = f"s3://{bucket}/videos"
    assert collect_videos([f"{base}/notes.txt"]) == [f"{base}/notes.txt"]  # named: kept whatever its extension
    assert collect_videos([f"{base}/missing.mp4"]) == [f"{base}/missing.mp4"]  # kept: it gets an error record
    assert collect_videos([f"{base}/clip*.mp4"]) == [f"{base}/clip2.mp4", f"{base}/clip10.mp4"]
    assert collect_videos([f"s3://{bucket}/*/"]) == [f"s3://{bucket}/other/z.mp4"] + [
        f"{base}/{name}" for name in VIDEOS]  # matched prefixes are listed
    listing = tmp_path / "list.txt"
    listing.write_text(f"# mixed\n{base}/sub/\nlocal.mp4\nhttp://127.0.0.1:9/x.mp4\n{base}/a.mp4\n{base}/a.mp4\n")
    assert collect_videos([f"@{listing}"]) == [f"{base}/sub/b.avi", f"{base}/sub/deeper/c.mp4",
                                               str(tmp_path / "local.mp4"), "http://127.0.0.1:9/x.mp4", f"{base}/a.mp4"]
    with pytest.raises(StamError, match="no objects match"):
        collect_videos([f"{base}/*.webm"])
    with pytest.raises(StamError, match=f"no videos found in: s3://{bucket}/nothing/"):
        collect_videos([f"s3://{bucket}/nothing/"])
    with pytest.raises(StamError, match="cannot list s3://no-such-bucket/x/: not found"):
        collect_videos(["s3://no-such-bucket/x/"])
    with pytest.raises(UsageError, match="an http\\(s\\) URL names one video"):
        collect_videos(["http://127.0.0.1:9/videos/"])


# ---------------------------------------------------------------------------- reading


def test_predict_from_a_prefix_matches_the_same_videos_read_locally(bucket_tree, tree, tiny_checkpoint, tmp_path,
                                                                    download_dir):
    _, bucket = bucket_tree
    local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    result = _predict(tree, "--model", tiny_checkpoint, "--device", "cpu", "-o", local_out, "-q")
    assert result.exit_code == 0, result.output
    missing = f"s3://{bucket}/videos/missing.mp4"
    result = _predict(f"s3://{bucket}/videos/", missing, "--model", tiny_checkpoint, "--device", "cpu",
                      "-o", remote_out, "-b", "2", "-q")
    assert result.exit_code == 1, result.output  # the missing object failed
    local, remote = _lines(local_out), _lines(remote_out)
    assert [r["path"] for r in remote] == [f"s3://{bucket}/videos/{name}" for name in VIDEOS] + [missing]
    assert len(local) == len(VIDEOS) and all(r["status"] == "ok" for r in local)
    for r, l in zip(remote, local):
        _same_results(r, l)
    assert remote[-1]["status"] == "error" and remote[-1]["error"] == f"cannot read {missing}: not found"
    assert list(download_dir.iterdir()) == []  # every temporary copy removed...
    assert download_dir.stat().st_mtime_ns > 0  # ...after being made there


def test_http_urls_are_read_like_files(file_server, tree, tiny_checkpoint, tmp_path, download_dir):
    served, url = file_server
    for name in ("a.mp4", "sub/b.avi"):
        (served / Path(name).name).write_bytes((tree / name).read_bytes())
    out, local_out = tmp_path / "r.jsonl", tmp_path / "l.jsonl"
    result = _predict(f"{url}/a.mp4", f"{url}/b.avi", f"{url}/gone.mp4", "--model", tiny_checkpoint,
                      "--device", "cpu", "-o", out, "-q")
    assert result.exit_code == 1, result.output
    _predict(tree / "a.mp4", tree / "sub/b.avi", "--model", tiny_checkpoint, "--device", "cpu", "-o", local_out, "-q")
    records, local = _lines(out), _lines(local_out)
    assert [r["path"] for r in records] == [f"{url}/a.mp4", f"{url}/b.avi", f"{url}/gone.mp4"]
    _same_results(records[0], local[0])
    _same_results(records[1], local[1])
    assert records[2]["error"] == f"cannot read {url}/gone.mp4: not found (HTTP 404 File not found)"
    assert list(download_dir.iterdir()) == []


def test_read_input_gives_the_url_back_and_names_it_in_errors(bucket_tree, download_dir):
    from stamcli.decode import ClipSpec, read_clip

    _, bucket = bucket_tree
    url = f"s3://{bucket}/videos/a.mp4"
    clip = read_input(url, lambda path: read_clip(path, 4, 32))
    assert clip.path == url and clip.frame_count == 6
    # ClipSpec.read (what the local engine's and the Ray engine's decoders call) reads URLs the same way
    views = ClipSpec(4, 32, clips=2).read(url)
    assert views.path == url and views.frames.shape == (2, 4, 3, 32, 32)
    not_a_video = f"s3://{bucket}/other/z.mp4"
    for read in (lambda: read_input(not_a_video, lambda path: read_clip(path, 4, 32)),
                 lambda: ClipSpec(4, 32).read(not_a_video)):
        with pytest.raises(StamError) as err:
            read()
        assert not_a_video in str(err.value) and str(download_dir) not in str(err.value)
    assert list(download_dir.iterdir()) == []


# ---------------------------------------------------------------------------- limits and failures


class _OddHandler(BaseHTTPRequestHandler):
    """``/forbidden.mp4``: 403; ``/nolength.mp4``: 300 kB with no Content-Length; ``/slow.mp4``: announces
    100 MB and trickles them (64 kB every 20 ms, at most 10 s)."""

    def do_GET(self):  # noqa: N802
        if self.path == "/forbidden.mp4":
            self.send_error(403)
            return
        self.send_response(200)
        if self.path == "/slow.mp4":
            self.send_header("Content-Length", str(100 << 20))
        self.end_headers()
        try:
            if self.path == "/nolength.mp4":
                self.wfile.write(b"\0" * 300_000)
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.wfile.write(b"\0" * 65536)
                time.sleep(0.02)
        except OSError:  # the client went away
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_server():
    with http_server(_OddHandler) as url:
        yield url


def test_size_cap_before_and_during_the_download(bucket_tree, odd_server, tiny_checkpoint, tmp_path, monkeypatch,
                                                 download_dir):
    _, bucket = bucket_tree
    url = f"s3://{bucket}/videos/a.mp4"
    monkeypatch.setenv("STAM_MAX_DOWNLOAD_BYTES", "1K")
    with pytest.raises(StamError, match=rf"^{url} is \d+\.\d KiB, over the download limit of 1\.0 KiB "
                                        r"\(set STAM_MAX_DOWNLOAD_BYTES to raise it\)$"):
        with local_copy(url):
            pass
    out = tmp_path / "r.jsonl"
    result = _predict(url, "--model", tiny_checkpoint, "--device", "cpu", "-o", out, "-q")
    assert result.exit_code == 1
    assert "over the download limit of 1.0 KiB" in _lines(out)[0]["error"]
    # no Content-Length: the cap is checked while streaming
    with pytest.raises(StamError, match=rf"^{odd_server}/nolength.mp4 is over the download limit of 97.7 KiB"):
        with local_copy(f"{odd_server}/nolength.mp4", max_bytes=100_000):
            pass
    with local_copy(f"{odd_server}/nolength.mp4", max_bytes=None) as path:
        assert os.path.getsize(path) == 300_000 and path.endswith(".mp4")
    assert list(download_dir.iterdir()) == []
    monkeypatch.setenv("STAM_MAX_DOWNLOAD_BYTES", "0")
    assert max_download_bytes() is None
    monkeypatch.setenv("STAM_MAX_DOWNLOAD_BYTES", "huge")
    with pytest.raises(UsageError, match="invalid STAM_MAX_DOWNLOAD_BYTES='huge'"):
        max_download_bytes()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_denied_and_unreachable_are_one_line_errors(s3, odd_server, monkeypatch, download_dir):
    with pytest.raises(StamError, match=rf"^cannot read {odd_server}/forbidden.mp4: access denied \(HTTP 403 Forbidden\)$"):
        with local_copy(f"{odd_server}/forbidden.mp4"):
            pass
    port = _closed_port()
    with pytest.raises(StamError, match=rf"^cannot read http://127.0.0.1:{port}/a.mp4: cannot reach 127.0.0.1:{port}: "):
        with local_copy(f"http://127.0.0.1:{port}/a.mp4"):
            pass
    from conftest import _clear_s3fs_cache

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    _clear_s3fs_cache()
    with pytest.raises(StamError) as err:
        with local_copy("s3://any-bucket/a.mp4"):
            pass
    assert str(err.value).startswith("cannot read s3://any-bucket/a.mp4: cannot reach the server: Could not connect "
                                     f"to the endpoint URL: \"http://127.0.0.1:{port}/")
    assert "\n" not in str(err.value)
    assert list(download_dir.iterdir()) == []


def test_abort_downloads_stops_a_running_download(odd_server, download_dir):
    failure = []

    def run():
        try:
            with local_copy(f"{odd_server}/slow.mp4", max_bytes=None):
                pass
        except StamError as err:
            failure.append(str(err))

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p.stat().st_size for p in download_dir.iterdir()):
        time.sleep(0.01)  # until bytes arrive
    abort_downloads()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert failure == [f"download of {odd_server}/slow.mp4 stopped: the run was interrupted"]
    assert list(download_dir.iterdir()) == []
    with local_copy(f"{odd_server}/nolength.mp4", max_bytes=None) as path:  # later downloads are not affected
        assert os.path.getsize(path) == 300_000


def test_a_missing_backend_names_the_extra_to_install(s3, monkeypatch, tiny_checkpoint, tmp_path):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed (it is not in [dev])
    result = _predict("gs://bucket/videos/", "--model", tiny_checkpoint, "--device", "cpu", "-q")
    assert result.exit_code == 1
    assert result.output.strip() == 'error: reading gs:// URLs needs gcsfs: pip install "stamcli[gcs]"'
    result = _predict(tmp_path, "--model", tiny_checkpoint, "--device", "cpu", "-o", "gs://bucket/tags.parquet")
    assert result.output.strip() == 'error: writing results to gs:// URLs needs gcsfs: pip install "stamcli[gcs]"'
    assert result.exit_code == 1  # before the run: the folder has no videos
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    with pytest.raises(StamError, match=r'^reading s3:// URLs needs s3fs: pip install "stamcli\[s3\]"$'):
        collect_videos(["s3://bucket/a.mp4"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = _predict(tmp_path, "--model", tiny_checkpoint, "--device", "cpu", "-o", tmp_path / "t.parquet", "-q")
    assert result.output.strip() == 'error: Parquet output needs pyarrow: pip install "stamcli[parquet]"'
    assert result.exit_code == 1


# ---------------------------------------------------------------------------- results in object storage


def _get(client, bucket: str, key: str, tmp_path: Path) -> Path:
    path = tmp_path / "got" / key.rsplit("/", 1)[-1]
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return path


def test_results_go_to_object_storage_and_resume_from_there(s3, tree, tiny_checkpoint, tmp_path, monkeypatch):
    client, bucket = s3
    monkeypatch.setenv("STAM_STAGING_DIR", str(tmp_path / "staging"))
    local = tmp_path / "local.parquet"
    assert _predict(tree, "--model", tiny_checkpoint, "--device", "cpu", "-o", local, "-q").exit_code == 0
    for fmt in ("parquet", "jsonl"):
        url = f"s3://{bucket}/results/tags.{fmt}"
        first = tmp_path / "first.txt"
        first.write_text("\n".join(str(tree / name) for name in VIDEOS[:2]))
        result = _predict(f"@{first}", "--model", tiny_checkpoint, "--device", "cpu", "-o", url, "-q")
        assert result.exit_code == 0, result.output
        got = read_records(_get(client, bucket, f"results/tags.{fmt}", tmp_path))
        assert [r["path"] for r in got] == [str(tree / name) for name in VIDEOS[:2]]
        result = _predict(tree, "--model", tiny_checkpoint, "--device", "cpu", "-o", url, "--resume")
        assert result.exit_code == 0, result.output
        assert f"tagged {len(VIDEOS) - 2}, failed 0, 2 already done" in " ".join(result.output.split())
        got, expected = read_records(_get(client, bucket, f"results/tags.{fmt}", tmp_path)), read_records(local)
        assert [r["path"] for r in got] == [r["path"] for r in expected] == [str(tree / name) for name in VIDEOS]
        for r, e in zip(got, expected):
            _same_results(r, e)
    result = _predict(tree, "--model", tiny_checkpoint, "--device", "cpu", "-o", f"s3://{bucket}/r.csv")
    assert result.exit_code == 2
    assert f"--output s3://{bucket}/r.csv: results in object storage must be jsonl or parquet, not csv" in result.output
    result = _predict(tree, "--model", tiny_checkpoint, "--device", "cpu", "-o", "http://127.0.0.1:9/r.parquet")
    assert result.exit_code == 2 and "not http(s)" in result.output


def test_a_failed_upload_keeps_the_results_for_resume(s3, tree, tiny_checkpoint, tmp_path, monkeypatch):
    client, _ = s3
    monkeypatch.setenv("STAM_STAGING_DIR", str(tmp_path / "staging"))
    url = "s3://later-bucket/tags.parquet"
    result = _predict(tree / "a.mp4", tree / "clip2.mp4", "--model", tiny_checkpoint, "--device", "cpu", "-o", url)
    assert result.exit_code == 1
    assert f"cannot upload results to {url}: not found" in result.output
    assert "run again with --resume to upload them" in result.output
    client.create_bucket(Bucket="later-bucket")
    result = _predict(tree / "a.mp4", tree / "clip2.mp4", "--model", tiny_checkpoint, "--device", "cpu", "-o", url,
                      "--resume")
    assert result.exit_code == 0, result.output
    assert "tagged 0, failed 0, 2 already done" in " ".join(result.output.split())  # nothing was lost
    got = read_records(_get(client, "later-bucket", "tags.parquet", tmp_path))
    assert [r["path"] for r in got] == [str(tree / "a.mp4"), str(tree / "clip2.mp4")]
    assert not list((tmp_path / "staging").rglob("*.pending"))
