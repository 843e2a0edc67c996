"""Tests of stamcli.download against a real HTTP server on 127.0.0.1 that misbehaves on request.

:class:`FakeServer` (the ``server`` fixture) serves in-memory files with Range support and
records every request; tests/test_weights.py reuses it.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest
import torch

from stamcli import download
from stamcli.download import (
    download_file, part_path, read_record, record_path, sha256_file, verify_download,
)
from stamcli.errors import CheckpointError, DownloadError

# ----------------------------------------------------------------------------- payload


def make_checkpoint() -> tuple[bytes, int]:
    """A small real PyTorch checkpoint (zip format) and the offset of its largest tensor's data."""
    weight = torch.arange(64 * 256, dtype=torch.float32).reshape(64, 256)
    buf = io.BytesIO()
    torch.save({"model": {"fc.weight": weight, "fc.bias": torch.zeros(64)}}, buf)
    payload = buf.getvalue()
    tensor_at = payload.find(weight.numpy().tobytes())
    assert payload[:4] == b"PK\x03\x04" and tensor_at > 0
    return payload, tensor_at


PAYLOAD, TENSOR_AT = make_checkpoint()
HALF = len(PAYLOAD) // 2


# ----------------------------------------------------------------------------- the server


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict

    @property
    def range_start(self) -> Optional[int]:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(match.group(1)) if match else None


@dataclass
class FakeServer:
    """Files to serve and how to misbehave. Offsets are positions in the file, not the response."""

    base_url: str = ""
    files: dict = field(default_factory=dict)  # URL path -> bytes
    requests: list = field(default_factory=list)  # SeenRequest, in order
    drop_at: list = field(default_factory=list)  # per GET, consumed: close after this offset
    always_drop_at: Optional[int] = None  # close every GET at this offset
    reset: bool = False  # drop with a TCP reset instead of a clean close
    stall_at: list = field(default_factory=list)  # per GET, consumed: go silent at this offset until the next request
    ignore_range: bool = False  # always answer 200 with the whole file
    status: Optional[int] = None  # answer every request with this error status
    extra_length: int = 0  # announce a file this much larger than the bytes there are
    corrupt_at: Optional[int] = None  # flip the bits of the byte at this offset
    no_length: bool = False  # send no Content-Length: the body ends when the connection closes
    gate: Optional[threading.Event] = None  # the first GET sends its body once set; a second GET sets it
    arrived: threading.Condition = field(default_factory=threading.Condition)  # notified at each request

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def gets(self) -> list:
        return [r for r in self.requests if r.method == "GET"]


class Handler(BaseHTTPRequestHandler):
    """Serves ``FakeServer.files`` with single-range support and the configured misbehaviour."""

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def log_message(self, *args):
        pass

    def _serve(self, body: bool) -> None:
        fake: FakeServer = self.server.fake
        seen = SeenRequest(self.command, self.path, dict(self.headers))
        with fake.arrived:
            fake.requests.append(seen)
            fake.arrived.notify_all()
        if fake.status:
            self.send_error(fake.status)
            return
        data = fake.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if fake.corrupt_at is not None:
            data = bytearray(data)
            data[fake.corrupt_at] ^= 0xFF
        total = len(data) + fake.extra_length
        start = None if fake.ignore_range else seen.range_start
        if start is not None and start >= total:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{total}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200 if start is None else 206)
        self.send_header("Accept-Ranges", "bytes")
        if not fake.no_length:
            self.send_header("Content-Length", str(total - (start or 0)))
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.end_headers()
        if body:
            if fake.gate is not None:
                if len(fake.gets) == 1:
                    fake.gate.wait(60)
                fake.gate.set()
            self._send_body(fake, data, start or 0)

    def _send_body(self, fake: FakeServer, data: bytes, start: int) -> None:
        drop = fake.drop_at.pop(0) if fake.drop_at else fake.always_drop_at
        stall = fake.stall_at.pop(0) if fake.stall_at else None
        try:
            if stall is not None:
                requests = len(fake.requests)
                self.wfile.write(data[start:stall])
                self.wfile.flush()
                with fake.arrived:  # silent until the client gives up on this response and asks again
                    fake.arrived.wait_for(lambda: len(fake.requests) > requests, timeout=120)
                start = max(start, stall)
            self.wfile.write(data[start:drop])
            if drop is not None and fake.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
        except OSError:  # the client gave up on a stalled response
            pass
        self.close_connection = True


@pytest.fixture
def server():
    """A FakeServer on 127.0.0.1 serving PAYLOAD at /files/stam_16.pth."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = FakeServer(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.fake.files["/files/stam_16.pth"] = PAYLOAD
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.fake
    httpd.shutdown()
    httpd.server_close()


def fetch(server: FakeServer, dest: Path, **kwargs) -> Path:
    kwargs = {"progress": False, "retry_wait": 0, **kwargs}
    return download_file(server.url("/files/stam_16.pth"), dest, **kwargs)


def assert_installed(dest: Path, data: bytes = PAYLOAD) -> None:
    """``dest`` holds ``data``, with a matching record and no part left."""
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()
    record = read_record(dest)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size"] == len(data)
    assert datetime.fromisoformat(record["downloaded_at"]).utcoffset().total_seconds() == 0


# ----------------------------------------------------------------------------- tests


def test_downloads_file_with_record(server, tmp_path):
    dest = tmp_path / "sub" / "stam_16.pth"
    assert fetch(server, dest) == dest
    assert_installed(dest)
    assert read_record(dest)["url"] == server.url("/files/stam_16.pth")
    assert len(server.gets) == 1 and "Range" not in server.gets[0].headers
    assert torch.load(dest, weights_only=True)["model"]["fc.bias"].shape == (64,)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["stam_16.pth", "stam_16.pth.download.json"]


def test_retry_resumes_after_connection_dropped_half_way(server, tmp_path):
    server.drop_at = [HALF]
    dest = fetch(server, tmp_path / "stam_16.pth")
    assert_installed(dest)
    assert [r.range_start for r in server.gets] == [None, HALF]


def test_retry_resumes_after_connection_reset(server, tmp_path):
    server.drop_at = [HALF]
    server.reset = True
    dest = fetch(server, tmp_path / "stam_16.pth")
    assert_installed(dest)
    assert len(server.gets) == 2 and 0 <= (server.gets[1].range_start or 0) <= HALF


def test_retry_resumes_after_read_timeout(server, tmp_path):
    server.stall_at = [HALF]
    dest = fetch(server, tmp_path / "stam_16.pth", timeout=1.0)  # the server stays silent until the retry
    assert_installed(dest)
    assert [r.range_start for r in server.gets] == [None, HALF]


def test_persistent_drops_fail_then_next_call_resumes(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    server.always_drop_at = HALF
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, retries=2)
    assert str(info.value) == (
        f"download of stam_16.pth stopped after {HALF} of {len(PAYLOAD)} bytes "
        "(server closed the connection); run the same command again to resume"
    )
    assert not dest.exists() and not record_path(dest).exists()
    assert part_path(dest).read_bytes() == PAYLOAD[:HALF]
    assert [r.range_start for r in server.gets] == [None, HALF, HALF]

    server.always_drop_at = None
    server.requests.clear()
    fetch(server, dest)
    assert_installed(dest)
    assert [r.range_start for r in server.gets] == [HALF]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    part_path(dest).write_bytes(b"stale bytes that must not end up in the file")
    server.ignore_range = True
    fetch(server, dest)
    assert_installed(dest)
    assert server.gets[0].range_start == 44


def test_complete_part_is_installed_on_416(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    part_path(dest).write_bytes(PAYLOAD)
    fetch(server, dest)
    assert_installed(dest)
    assert [r.range_start for r in server.gets] == [len(PAYLOAD)]


def test_oversized_part_is_discarded_on_416(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    part_path(dest).write_bytes(PAYLOAD + b"junk")
    fetch(server, dest)
    assert_installed(dest)
    assert [r.range_start for r in server.gets] == [len(PAYLOAD) + 4, None]


def test_sha256_mismatch_deletes_part(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    server.corrupt_at = TENSOR_AT + 100
    wanted = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, expected_sha256=wanted)
    message = str(info.value)
    assert message.startswith(f"sha256 mismatch for stam_16.pth: expected {wanted}, got ")
    assert message.endswith("; the partial file was deleted, run the command again")
    assert "\n" not in message
    assert not dest.exists() and not part_path(dest).exists()


def test_corruption_without_sha256_is_caught_by_zip_crc(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    server.corrupt_at = TENSOR_AT + 100
    with pytest.raises(DownloadError, match=r"^stam_16\.pth is corrupt \(CRC check failed for .*/data/\d+\)"):
        fetch(server, dest)
    assert not dest.exists() and not part_path(dest).exists()


def test_non_zip_file_is_not_crc_checked(server, tmp_path):
    server.files["/files/notes.txt"] = b"plain text, not an archive"
    dest = download_file(server.url("/files/notes.txt"), tmp_path / "notes.txt", progress=False)
    assert_installed(dest, b"plain text, not an archive")


def test_matching_sha256_and_size_pass(server, tmp_path):
    dest = fetch(
        server, tmp_path / "stam_16.pth",
        expected_sha256=hashlib.sha256(PAYLOAD).hexdigest().upper(), expected_size=len(PAYLOAD),
    )
    assert_installed(dest)


def test_http_404_is_not_retried(server, tmp_path):
    dest = tmp_path / "missing.pth"
    url = server.url("/files/missing.pth")
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False, retry_wait=0)
    assert str(info.value) == f"HTTP 404 Not Found for {url}"
    assert len(server.gets) == 1
    assert not dest.exists() and not part_path(dest).exists()


def test_http_500_is_retried_then_reported(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    server.status = 500
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, retries=1)
    assert str(info.value) == f"HTTP 500 Internal Server Error for {server.url('/files/stam_16.pth')}"
    assert len(server.gets) == 2
    assert not dest.exists()


def test_connection_refused(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "stam_16.pth"
    with pytest.raises(DownloadError) as info:
        download_file(f"http://127.0.0.1:{port}/stam_16.pth", dest, progress=False, retry_wait=0)
    assert re.fullmatch(rf"cannot reach 127\.0\.0\.1:{port}: \[Errno \d+\] Connection refused", str(info.value))
    assert not dest.exists()


def test_invalid_url(tmp_path):
    with pytest.raises(DownloadError, match=r"^invalid URL 'nowhere/stam_16\.pth'"):
        download_file("nowhere/stam_16.pth", tmp_path / "stam_16.pth", progress=False)


def test_content_length_larger_than_body(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    server.extra_length = 100
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, retries=1)
    assert str(info.value).startswith(
        f"download of stam_16.pth stopped after {len(PAYLOAD)} of {len(PAYLOAD) + 100} bytes"
    )
    assert not dest.exists()
    assert part_path(dest).read_bytes() == PAYLOAD


def test_announced_size_contradicting_expected_size(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    server.extra_length = 100
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, expected_size=len(PAYLOAD))
    assert str(info.value) == (
        f"size mismatch for stam_16.pth: expected {len(PAYLOAD)} bytes, the server reports {len(PAYLOAD) + 100}"
    )
    assert len(server.gets) == 1 and not dest.exists()


def test_without_content_length(server, tmp_path):
    server.no_length = True
    dest = fetch(server, tmp_path / "stam_16.pth")
    assert_installed(dest)


def test_downloaded_size_contradicting_expected_size(server, tmp_path):
    server.no_length = True
    dest = tmp_path / "stam_16.pth"
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, expected_size=len(PAYLOAD) - 1)
    assert str(info.value) == (
        f"size mismatch for stam_16.pth: expected {len(PAYLOAD) - 1} bytes, got {len(PAYLOAD)}; "
        "the partial file was deleted, run the command again"
    )
    assert not dest.exists() and not part_path(dest).exists()


def test_existing_file_is_kept_without_request(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    dest.write_bytes(b"already here")
    assert fetch(server, dest) == dest
    assert dest.read_bytes() == b"already here"
    assert server.requests == []


def test_force_replaces_file_and_record(server, tmp_path):
    dest = fetch(server, tmp_path / "stam_16.pth")
    new = PAYLOAD[:-1] + b"\x00"
    server.files["/files/stam_16.pth"] = new
    part_path(dest).write_bytes(b"stale part")
    fetch(server, dest, force=True)
    assert_installed(dest, new)
    assert [r.range_start for r in server.gets] == [None, None]


def test_failed_forced_download_keeps_old_file(server, tmp_path):
    dest = fetch(server, tmp_path / "stam_16.pth")
    server.status = 404
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server, dest, force=True)
    assert_installed(dest)


def test_interrupt_leaves_part_not_dest(server, tmp_path, monkeypatch):
    class InterruptingBar(download.tqdm):
        """Ctrl-C arrives while the second chunk is being saved."""

        chunks = 0

        def update(self, n=1):
            self.chunks += n > 0
            if self.chunks == 2:
                raise KeyboardInterrupt
            super().update(n)

    monkeypatch.setattr(download, "tqdm", InterruptingBar)
    monkeypatch.setattr(download, "CHUNK_SIZE", 4096)
    dest = tmp_path / "stam_16.pth"
    with pytest.raises(KeyboardInterrupt):
        fetch(server, dest)
    assert not dest.exists()
    part = part_path(dest).read_bytes()
    assert 0 < len(part) < len(PAYLOAD) and PAYLOAD.startswith(part)


def test_progress_bar_on_stderr(server, tmp_path, capsys):
    dest = fetch(server, tmp_path / "stam_16.pth", progress=True)
    assert_installed(dest)
    captured = capsys.readouterr()
    assert "stam_16.pth" in captured.err and "100%" in captured.err
    assert captured.out == ""


def test_verify_download(server, tmp_path):
    dest = fetch(server, tmp_path / "stam_16.pth")
    hint = "stam download-weights stam_16 --force"
    assert verify_download(dest, redownload_hint=hint) is True

    corrupted = bytearray(PAYLOAD)
    corrupted[TENSOR_AT] ^= 1
    dest.write_bytes(bytes(corrupted))
    with pytest.raises(CheckpointError) as info:
        verify_download(dest, redownload_hint=hint)
    recorded = hashlib.sha256(PAYLOAD).hexdigest()
    assert str(info.value) == (
        f"{dest} has changed since it was downloaded (sha256 {sha256_file(dest)[:12]}… != recorded "
        f"{recorded[:12]}…); re-download it with: {hint}"
    )

    dest.write_bytes(PAYLOAD[:-10])
    with pytest.raises(CheckpointError, match=rf"\({len(PAYLOAD) - 10} bytes != recorded {len(PAYLOAD)}\)"):
        verify_download(dest, redownload_hint=hint)

    record_path(dest).unlink()
    assert verify_download(dest, redownload_hint=hint) is False


def test_unreadable_record_is_reported(tmp_path):
    path = tmp_path / "stam_16.pth"
    path.write_bytes(b"x")
    record_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cannot read download record .*stam_16\.pth\.download\.json"):
        verify_download(path, redownload_hint="stam download-weights stam_16 --force")


def test_sha256_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_processes_racing_for_one_file_download_it_once(server, tmp_path):
    # Two processes (the ranks of a torchrun job) need the same missing file. The server holds the
    # first download until a second GET arrives, or until the second process says that it waits.
    import subprocess
    import sys

    from conftest import CHILD_ENV

    server.gate = threading.Event()
    dest = tmp_path / "weights" / "stam_16.pth"
    code = ("import sys; from stamcli.download import download_file; "
            "download_file(sys.argv[1], sys.argv[2], retry_wait=0)")
    command = [sys.executable, "-c", code, server.url("/files/stam_16.pth"), str(dest)]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    deadline = time.monotonic() + 60
    while not server.gets and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    waited = second.stderr.readline()  # its first line: it waits, or (without the lock) its progress bar
    server.gate.set()
    assert first.wait(60) == 0 and second.wait(60) == 0, first.stderr.read() + second.stderr.read()
    first.stderr.close(), second.stderr.close()
    assert waited.strip() == "another process is downloading stam_16.pth; waiting for it"
    assert len(server.gets) == 1
    assert_installed(dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["stam_16.pth", "stam_16.pth.download.json"]


def test_a_lock_left_by_a_dead_process_does_not_block(server, tmp_path):
    dest = tmp_path / "stam_16.pth"
    download.lock_path(dest).write_bytes(b"")  # its process died: the file is there, nobody holds its lock
    fetch(server, dest)
    assert_installed(dest)
    assert not download.lock_path(dest).exists()
