"""Half-open index ranges over the input list: shards, committed parts, and the work still to do.

A shard is one contiguous slice of the sorted input list; committed parts cover ranges of
it; what is left is the shard minus the committed ranges, walked in order by `RangeIndex`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from skutag.errors import InputError

Range = tuple[int, int]


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

    def slice(self, total: int) -> Range:
        return total * self.index // self.count, total * (self.index + 1) // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, non-overlapping, adjacent ranges joined; empty ranges dropped."""
    merged: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def subtract(whole: Range, done: Iterable[Range]) -> list[Range]:
    """The parts of `whole` not covered by `done`."""
    left, cursor = [], whole[0]
    for start, end in merge(done):
        if end <= cursor or start >= whole[1]:
            continue
        if start > cursor:
            left.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < whole[1]:
        left.append((cursor, whole[1]))
    return left


def length(ranges: Iterable[Range]) -> int:
    return sum(end - start for start, end in ranges)


class RangeIndex:
    """Position p in the concatenation of `ranges` -> input index. O(log ranges) per lookup."""

    def __init__(self, ranges: list[Range]):
        self.ranges = list(ranges)
        self._starts = []
        total = 0
        for start, end in self.ranges:
            self._starts.append(total)
            total += end - start
        self._length = total

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self._length:
            raise IndexError(position)
        slot = bisect.bisect_right(self._starts, position) - 1
        return self.ranges[slot][0] + position - self._starts[slot]


def covering(indices: Iterable[int]) -> list[Range]:
    """The minimal ranges covering sorted `indices` (what a committed part lists in the manifest)."""
    ranges: list[list[int]] = []
    for index in indices:
        if ranges and index == ranges[-1][1]:
            ranges[-1][1] += 1
        else:
            ranges.append([index, index + 1])
    return [(a, b) for a, b in ranges]
