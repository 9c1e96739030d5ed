"""Arrow arrays and scalars from Python values without pyarrow's pandas probe.

`pa.array`, `pa.scalar` and a compute function given a Python scalar first ask whether the value
is a pandas object, which imports pandas (0.3-0.7 s, about 50 MB) the first time in a process. A
run with nothing to decode (a `--since` night, a finished rerun) needs no pandas, so the code on
its path builds its few Arrow values here instead, through pyarrow's builders and buffers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa


def strings(values: Iterable[str | None]) -> pa.Array:
    """A string array of `values` (None: null)."""
    builder = pa.lib.StringBuilder()
    builder.append_values(list(values))
    return builder.finish()


def numbers(values: np.ndarray) -> pa.Array:
    """A null-free array of a 1-D numeric or bool numpy array (bools are bit-packed)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def filled_false(mask: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A boolean mask with its nulls as false (Kleene: null AND false is false)."""
    import pyarrow.compute as pc

    return pc.and_kleene(mask, pc.is_valid(mask))


def int64s(values: list[int | None]) -> pa.Array:
    """An int64 array of `values` (None: null)."""
    count = len(values)
    missing = np.fromiter((v is None for v in values), bool, count)
    data = np.fromiter((0 if v is None else v for v in values), np.int64, count)
    nulls = int(missing.sum())
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.int64(), count, [validity, pa.py_buffer(data)], null_count=nulls)


def array(values: list, type: pa.DataType) -> pa.Array:
    """`pa.array(values, type)` for the string and int64 columns of plans and predictions."""
    if type == pa.string():
        return strings(values)
    if type == pa.int64():
        return int64s(values)
    raise TypeError(f"skutag.batchrun.arrow.array: no builder for {type}")


def read_parquet(source, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """One Parquet file (a path or an open file) as a table, like `pq.read_table` but without
    `pyarrow.dataset` (which imports pandas). With `schema`: its columns in its order and types, a
    column the file lacks (an older writer's file) as nulls."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(source)
    if schema is None:
        return parquet.read(columns=columns)
    present = set(parquet.schema_arrow.names)
    table = parquet.read(columns=[name for name in schema.names if name in present])
    arrays = [
        table.column(f.name).cast(f.type) if f.name in present else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def bools(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow mask as a numpy bool array, nulls as false (`to_numpy` probes for pandas)."""
    mask = filled_false(mask)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    if len(mask) == 0:
        return np.zeros(0, bool)
    bits = np.frombuffer(mask.buffers()[1], np.uint8)
    return np.unpackbits(bits, count=mask.offset + len(mask), bitorder="little")[mask.offset :].astype(bool)


def scalar(value: str | bool | None, type: pa.DataType) -> pa.Scalar:
    """A string or bool scalar (None: null of `type`), for compute functions given constants."""
    if value is None:
        return pa.nulls(1, type)[0]
    if type == pa.string():
        return strings([value])[0]
    if type == pa.bool_():
        return numbers(np.array([value], bool))[0]
    raise TypeError(f"skutag.batchrun.arrow.scalar: no builder for {type}")
