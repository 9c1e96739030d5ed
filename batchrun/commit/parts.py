"""A unit's part file, written so that no other process's part can replace it.

`write_part` creates `part-NNNNN.parquet` exclusively (`storage.create_exclusive`: a hard link
locally, a conditional PUT `If-None-Match: *` on S3, `ifGenerationMatch=0` on GCS). When a
file is already there (a crashed attempt's leftover, or the part `--retry-errors` rewrites),
its version is read, then this process's lease is checked, then that very version is removed
(`conditional.remove_if`) and the create tried again. The order is what makes a stalled holder
(a zombie) harmless:

- its late PUT is conditional: against the newcomer's part it fails (412) and lands nothing;
- a newcomer writes its part only after it took the lease, so a zombie that reads the version
  of the newcomer's part learns at its lease check, which comes after, that it lost the shard
  (`LeaseHeld`, exit 75) and removes nothing; a version it read before the newcomer wrote is
  no longer the stored one, so its conditional removal removes nothing either.

So the bytes under a committed part's name are the committer's, for skutag's reader (which reads
what the commit log lists) and for a glob of `part-*.parquet` alike.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from skutag import conditional, storage
from skutag.errors import LeaseHeld

log = logging.getLogger(__name__)
ROW_GROUP_ROWS = 64 * 1024
ATTEMPTS = 5


def parquet_bytes(table: pa.Table) -> bytes:
    """The part file's bytes: zstd, row groups of `ROW_GROUP_ROWS` rows."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()


def write_part(
    table: pa.Table, uri: str, storage_options: dict[str, Any] | None = None, lease: Any = None
) -> None:
    """Create the part `uri` from `table`; a file already there is replaced only after `lease.check()`
    (commit.lease.Lease; None: no lease to check) and only in the version read before that check."""
    data = parquet_bytes(table)
    for _attempt in range(ATTEMPTS):
        if storage.create_exclusive(uri, data, storage_options):
            return
        found = conditional.version_of(uri, storage_options)
        if lease is not None:
            lease.check()  # a zombie stops here: the part in the way may be its newcomer's
        if found is not None:
            log.info("replacing %s (a part no commit log of this attempt lists)", uri)
            conditional.remove_if(uri, found, storage_options)
    raise LeaseHeld(f"stopped: {uri} was written by another process on every try; rerun to resume")
