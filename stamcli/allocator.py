"""Keep freed memory in the process (glibc), so a CPU forward pass does not page-fault its tensors in anew.

glibc serves every allocation above its mmap threshold (128 KiB, raised on the fly up to 32 MiB)
with a fresh ``mmap`` and hands it back to the kernel when it is freed; the next allocation of
the same size is then page-faulted in again, 4 KiB at a time. A STAM forward pass on the CPU
allocates and frees tens of MB per layer (ViT-B's MLP activations for 16 frames are 39 MB), so
with the defaults every pass page-faults its activations in anew, and with freed memory kept it
does not (after the first passes; ``tests/test_allocator.py`` shows it on a one-block model;
counts and speed-ups: ``benchmarks/README.md``, "Measurements behind the code"). This is the
same fix as preloading jemalloc or tcmalloc, which PyTorch's CPU performance guides recommend,
without an extra library.

glibc caps the mmap threshold at 32 MiB (on 64-bit systems), so a single tensor larger than that
is still mapped afresh each time; :class:`stamcli.model.STAM` runs its ViT on a few frames at a
time on the CPU so that its activations stay below the cap.

The cost: the process keeps up to :data:`TRIM_BYTES` of freed memory instead of returning it at
once, so its resident size stays near its peak. Nothing is changed where a ``MALLOC_*``
environment variable already tunes the allocator, or off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: allocations up to this size come from the reusable heap (glibc's largest allowed value on 64-bit)
MMAP_THRESHOLD_BYTES = 32 << 20
#: free memory kept at the top of the heap before any is returned to the kernel
TRIM_BYTES = 1 << 30
#: extra heap requested from the kernel each time it grows (fewer, larger ``brk`` calls)
TOP_PAD_BYTES = 64 << 20

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_applied: bool | None = None


def _glibc():
    """The C library if it is glibc (it has ``mallopt``), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Tune glibc's allocator to keep and reuse freed memory (once per process).

    True when the settings are in force (now or from an earlier call); False when left alone:
    not glibc, or the user's own ``MALLOC_*`` / ``GLIBC_TUNABLES`` settings take precedence.
    """
    global _applied
    if _applied is None:
        _applied = False
        user = [name for name in _USER_SETTINGS if name in os.environ]
        libc = None if user else _glibc()
        if libc is not None:
            settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_BYTES),
                        (M_TOP_PAD, TOP_PAD_BYTES))
            _applied = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings)
            log.debug("glibc allocator keeps freed memory: %s", _applied)
        elif user:
            log.debug("allocator left as set by %s", ", ".join(user))
    return _applied
