"""The float tail of a classifier graph: every op from the outputs back to the global pooling.

An int8 export keeps this tail in float, so `probs` and `embedding` are never computed from
8-bit values. ONNX protos, OpenVINO IR and torch.fx graphs each have their own node API; the
walk is the same for all three and lives here, the formats pass how to step through theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from skutag.errors import SkutagError

N = TypeVar("N")

NO_POOLING = (
    "int8: cannot find the pooled features (no pooling op before the outputs) to keep the head in float"
)


def walk_tail(
    outputs: Iterable[N],
    inputs_of: Callable[[N], Iterable[N]],
    is_pooling: Callable[[N], bool],
    *,
    key: Callable[[N], Hashable] = id,
    skip: Callable[[N], bool] = lambda node: False,
    is_input: Callable[[N], bool] = lambda node: False,
) -> list[N]:
    """Nodes reached walking back from `outputs`, each path stopping at (and including) its first
    pooling node. `skip`: nodes neither kept nor followed (constants, shape arithmetic). A path that
    reaches the graph's input (`is_input`) has no pooled features: SkutagError."""
    seen: dict[Hashable, N] = {}
    frontier = list(outputs)
    while frontier:
        node = frontier.pop()
        if is_input(node):
            raise SkutagError(NO_POOLING)
        if skip(node) or key(node) in seen:
            continue
        seen[key(node)] = node
        if not is_pooling(node):
            frontier.extend(inputs_of(node))
    return list(seen.values())
