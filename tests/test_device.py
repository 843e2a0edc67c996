"""stamcli.device: which precision ``auto`` picks on which GPU (no GPU needed: the GPU's properties are faked)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from stamcli.device import native_bf16, resolve_precision


def test_auto_precision_asks_the_chosen_gpu_and_does_not_count_emulated_bf16(monkeypatch):
    # cuda:0 an H100 (compute capability 9.0), cuda:1 a V100 (7.0), which only emulates bf16 (slower
    # than fp16 there) although torch.cuda.is_bf16_supported() says yes by default
    capability = {0: 9, 1: 7}
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(
        major=capability[torch.device(device).index]))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_precision("auto", torch.device("cuda:0")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda:1")) == "fp16"
    assert resolve_precision("bf16", torch.device("cuda:1")) == "bf16"  # asked for: the user's choice
    assert native_bf16(torch.device("cuda:0")) and not native_bf16(torch.device("cuda:1"))
    monkeypatch.setattr(torch.version, "hip", "6.2")  # every ROCm GPU computes bf16
    assert resolve_precision("auto", torch.device("cuda:1")) == "bf16"


def test_the_suite_refuses_device_auto_so_every_test_names_its_device(monkeypatch):
    # conftest sets STAM_REQUIRE_DEVICE for the suite and its child processes: a test that forgets
    # --device cpu fails here, not only later on a GPU machine where auto would pick CUDA in bf16.
    from stamcli.device import REQUIRE_DEVICE_ENV, resolve_device
    from stamcli.errors import StamError

    assert os.environ[REQUIRE_DEVICE_ENV] == "1"
    with pytest.raises(StamError, match=r"^--device auto is refused because STAM_REQUIRE_DEVICE is set: name the "
                                        r"device \(--device cpu, cuda or cuda:N\)$"):
        resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")  # a named device is fine
    for off in ("0", ""):
        monkeypatch.setenv(REQUIRE_DEVICE_ENV, off)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert resolve_device("auto") == torch.device("cpu")
