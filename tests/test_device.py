"""stamcli.device: which precision ``auto`` picks on which GPU (no GPU needed: the GPU's properties are faked)."""

from __future__ import annotations

from types import SimpleNamespace

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
