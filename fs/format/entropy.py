"""Shannon entropy of what a session writes, for the access event (docs/audit.md).

Ransomware rewrites files with ciphertext, near 8 bits per byte; documents and
code sit far lower.  The write path keeps a small sample of each session's
plaintext (at most SAMPLE_MAX bytes, PER_WRITE bytes from the middle of each
write: about 1 us per sampled write, nothing once the sample is full) and the
release computes the byte histogram once.  The sample is wiped at release and
scrambled at lock (sorted: the same histogram, none of the text).
"""
from __future__ import annotations

import math
from typing import Any

SAMPLE_MAX = 64 << 10
PER_WRITE = 8 << 10

_np: Any = None


def prepare() -> None:
    """Import numpy now (the mount calls this at start, not inside a request)."""
    global _np
    if _np is None:
        import numpy

        _np = numpy


def add_sample(sample: bytearray, buf: bytes | bytearray | memoryview) -> None:
    take = min(PER_WRITE, SAMPLE_MAX - len(sample), len(buf))
    if take <= 0:
        return
    start = (len(buf) - take) // 2
    sample += memoryview(buf)[start : start + take]


def milli_bits(sample: bytes | bytearray) -> int:
    """Entropy in milli-bits per byte (0..8000), Miller-Madow corrected for the sample size."""
    n = len(sample)
    if n == 0:
        return 0
    if _np is None:
        prepare()
    view = _np.frombuffer(sample, dtype=_np.uint8)  # no copy of the plaintext
    counts = _np.bincount(view, minlength=256)
    del view  # release the buffer export: the sample is wiped (resized) next
    nonzero = counts[counts > 0]
    p = nonzero / n
    h = float(-(p * _np.log2(p)).sum()) + (len(nonzero) - 1) / (2 * n * math.log(2))
    return max(0, min(8000, int(round(h * 1000))))


def scramble(sample: bytearray) -> None:
    """Keep the histogram, lose the plaintext (lock)."""
    if sample:
        sample[:] = bytes(sorted(sample))


def wipe(sample: bytearray) -> None:
    if sample:
        sample[:] = bytes(len(sample))  # same length: overwritten in place, then freed
        del sample[:]
