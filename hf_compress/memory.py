"""Give freed heap memory back to the operating system (glibc only; a no-op elsewhere).

Module-sequential calibration interleaves the forwards of several paused batches, so the C heap
fills with freed chunks between live tensors that glibc keeps resident. ``malloc_trim(0)`` returns
those free pages (``madvise``) without moving anything, which keeps the peak RSS near the memory
that is really live (measured in ``bench/bench_llmcompressor.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def release_free_memory() -> None:
    """Return free heap pages to the OS where the C library supports it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
