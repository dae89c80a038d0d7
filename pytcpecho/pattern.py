"""The client's payload: a seeded pseudo-random stream, made and checked as it flows.

Byte ``i`` of the stream is byte ``i % BLOCK`` of a block drawn from the seed,
except that the first 8 bytes of every block are xored with the block number
(little-endian).  Any size runs in constant memory, and a lost, repeated or
reordered block never passes for the right one.  The Cython core implements
the same function in C; both must stay in step with this definition.
"""

from __future__ import annotations

import random

from .constants import BLOCK, HEADER


def make_base(seed: int) -> bytes:
    """The pattern's base block for ``seed``."""
    return random.Random(seed).randbytes(BLOCK)


class Pattern:
    """Pure-Python view of the stream defined by a base block."""

    def __init__(self, base: bytes) -> None:
        if len(base) != BLOCK:
            raise ValueError(f"pattern base must be {BLOCK} bytes")
        self.base = base
        self._block_no = -1
        self._block = base

    def block(self, k: int) -> bytes:
        """Block number ``k`` of the stream (the last one is cached)."""
        if k != self._block_no:
            key = k.to_bytes(8, "little")
            header = bytes(a ^ b for a, b in zip(self.base[:HEADER], key, strict=True))
            self._block = header + self.base[HEADER:]
            self._block_no = k
        return self._block

    def slice(self, off: int, n: int) -> bytes:
        """Stream bytes [off, off + n)."""
        parts = []
        while n > 0:
            k, j = divmod(off, BLOCK)
            m = min(n, BLOCK - j)
            parts.append(self.block(k)[j : j + m])
            off += m
            n -= m
        return b"".join(parts)

    def mismatch(self, data: memoryview | bytes, off: int) -> int:
        """Index in ``data`` of the first byte that is not stream byte off + index, or -1."""
        expected = self.slice(off, len(data))
        if data == expected:
            return -1
        return next(i for i, (a, b) in enumerate(zip(bytes(data), expected, strict=True)) if a != b)
