"""`--shard I/N`: shard I of N contiguous slices of the plan's units (zero-based)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from skutag.errors import InputError


@dataclass(frozen=True)
class Shard:
    """`--shard I/N`, zero-based: shard I of N contiguous slices."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise InputError(f"--shard must look like I/N (zero-based I), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 0 <= index < count:
            raise InputError(f"--shard {text}: need 0 <= I < N")
        return cls(index, count)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def tag(self) -> str:
        """`s0002-of-0004` for a sharded run, `` otherwise: part and control file names carry it."""
        return f"s{self.index:04d}-of-{self.count:04d}" if self.sharded else ""

    def slice(self, total: int) -> tuple[int, int]:
        return total * self.index // self.count, total * (self.index + 1) // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
