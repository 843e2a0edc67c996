"""Tests of stamcli.weights: the weights directory, mirrors, offline mode and ensure_weights.

Downloads go to the FakeServer of tests/test_download.py, serving the checkpoint under /mirror/.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from stamcli import weights
from stamcli.download import read_record, record_path
from stamcli.errors import CheckpointError, DownloadError, StamError
from stamcli.weights import (
    download_weights, ensure_weights, is_present, local_path, resolve_url, weights_dir,
)
from stamcli.zoo import get_model_info
from test_download import PAYLOAD, server  # noqa: F401  (server is a fixture)

STAM_16 = get_model_info("stam_16")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("STAM_WEIGHTS_DIR", "STAM_MIRROR", "STAM_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def mirror(server):  # noqa: F811
    """The URL of a mirror directory on the fake server holding stam_16.pth."""
    server.files["/mirror/stam_16.pth"] = PAYLOAD
    return server.url("/mirror/")


# ----------------------------------------------------------------------------- locations


def test_weights_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert weights_dir() == tmp_path / "weights"
    monkeypatch.setenv("STAM_WEIGHTS_DIR", "")
    assert weights_dir() == tmp_path / "weights"
    monkeypatch.setenv("STAM_WEIGHTS_DIR", str(tmp_path / "from_env"))
    assert weights_dir() == tmp_path / "from_env"
    assert weights_dir(tmp_path / "from_arg") == tmp_path / "from_arg"
    assert weights_dir(str(tmp_path / "as_text")) == tmp_path / "as_text"


def test_weights_dir_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir("~/w") == tmp_path / "w"


def test_local_path_and_is_present(tmp_path):
    path = local_path("stam_16", tmp_path)
    assert path == tmp_path / "stam_16.pth"
    assert not is_present("stam_16", tmp_path)
    path.write_bytes(b"x")
    assert is_present("stam_16", tmp_path)


def test_unknown_model_lists_known_names(tmp_path):
    with pytest.raises(StamError, match=r"unknown model 'stam_7'; known models: stam_8, stam_16"):
        local_path("stam_7", tmp_path)


def test_resolve_url(monkeypatch):
    assert resolve_url(STAM_16) == STAM_16.url
    assert resolve_url(STAM_16, "http://mirror.example/stam/") == "http://mirror.example/stam/stam_16.pth"
    monkeypatch.setenv("STAM_MIRROR", "http://env.example/w")
    assert resolve_url(STAM_16) == "http://env.example/w/stam_16.pth"
    assert resolve_url(STAM_16, "http://arg.example") == "http://arg.example/stam_16.pth"


# ----------------------------------------------------------------------------- ensure_weights


def test_ensure_weights_downloads_from_mirror(server, mirror, tmp_path):  # noqa: F811
    path = ensure_weights("stam_16", tmp_path / "w", mirror=mirror, progress=False)
    assert path == tmp_path / "w" / "stam_16.pth"
    assert path.read_bytes() == PAYLOAD
    assert read_record(path)["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert [r.path for r in server.requests] == ["/mirror/stam_16.pth"]


def test_ensure_weights_uses_env_dir_and_mirror(server, mirror, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STAM_WEIGHTS_DIR", str(tmp_path / "env_w"))
    monkeypatch.setenv("STAM_MIRROR", mirror)
    path = ensure_weights("stam_16", progress=False)
    assert path == tmp_path / "env_w" / "stam_16.pth"
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_present_file_is_verified_and_returned_without_request(server, mirror, tmp_path):  # noqa: F811
    first = ensure_weights("stam_16", tmp_path, mirror=mirror, progress=False)
    server.requests.clear()
    assert ensure_weights("stam_16", tmp_path, mirror=mirror, progress=False) == first
    assert ensure_weights("stam_16", tmp_path, offline=True) == first
    assert server.requests == []


def test_present_file_without_record_is_returned(server, mirror, tmp_path):  # noqa: F811
    path = tmp_path / "stam_16.pth"
    path.write_bytes(b"copied by hand")
    assert ensure_weights("stam_16", tmp_path, mirror=mirror, progress=False) == path
    assert path.read_bytes() == b"copied by hand"
    assert server.requests == []


def test_modified_file_is_refused_with_fix(mirror, tmp_path):
    path = ensure_weights("stam_16", tmp_path, mirror=mirror, progress=False)
    path.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(CheckpointError) as info:
        ensure_weights("stam_16", tmp_path, mirror=mirror, progress=False)
    message = str(info.value)
    assert message.startswith(f"{path} has changed since it was downloaded (sha256 ")
    assert message.endswith("re-download it with: stam download-weights stam_16 --force")


def test_offline_argument_refuses_to_download(server, mirror, tmp_path):  # noqa: F811
    with pytest.raises(StamError) as info:
        ensure_weights("stam_16", tmp_path / "w", mirror=mirror, offline=True)
    directory = (tmp_path / "w").resolve()
    assert str(info.value) == (
        f"stam_16 is not in {directory} and offline mode is on; fetch it with: "
        f"stam download-weights stam_16 --weights-dir {directory} --mirror {mirror}"
    )
    assert server.requests == []
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_offline_env_refuses_to_download(server, mirror, tmp_path, monkeypatch, value):  # noqa: F811
    monkeypatch.setenv("STAM_OFFLINE", value)
    monkeypatch.setenv("STAM_MIRROR", mirror)
    with pytest.raises(StamError, match=r"offline mode is on; fetch it with: stam download-weights stam_16 "):
        ensure_weights("stam_16", tmp_path)
    assert server.requests == []


def test_offline_env_off_and_argument_override(server, mirror, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STAM_OFFLINE", "0")
    monkeypatch.setenv("STAM_MIRROR", mirror)
    assert ensure_weights("stam_16", tmp_path / "a", progress=False).read_bytes() == PAYLOAD
    monkeypatch.setenv("STAM_OFFLINE", "1")
    assert ensure_weights("stam_16", tmp_path / "b", offline=False, progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


# ----------------------------------------------------------------------------- download_weights


def test_download_weights_checks_registry_sha256(server, mirror, tmp_path, monkeypatch):  # noqa: F811
    def info_with(sha256):
        return lambda name: dataclasses.replace(get_model_info(name), sha256=sha256)

    monkeypatch.setattr(weights, "get_model_info", info_with("0" * 64))
    with pytest.raises(DownloadError, match=r"^sha256 mismatch for stam_16\.pth: expected 0{64}, got "):
        download_weights("stam_16", tmp_path, mirror=mirror, progress=False)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(weights, "get_model_info", info_with(hashlib.sha256(PAYLOAD).hexdigest()))
    assert download_weights("stam_16", tmp_path, mirror=mirror, progress=False).read_bytes() == PAYLOAD


def test_download_weights_force(server, mirror, tmp_path):  # noqa: F811
    path = download_weights("stam_16", tmp_path / "new" / "dir", mirror=mirror, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert download_weights("stam_16", tmp_path / "new" / "dir", mirror=mirror, progress=False) == path
    assert len(server.requests) == 1

    server.files["/mirror/stam_16.pth"] = b"a newer release"
    download_weights("stam_16", tmp_path / "new" / "dir", mirror=mirror, force=True, progress=False)
    assert path.read_bytes() == b"a newer release"
    assert read_record(path)["size"] == len(b"a newer release")
    assert record_path(path).exists() and len(server.requests) == 2
