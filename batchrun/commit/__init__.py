"""What makes OUT trustworthy: the systemic-fault guard, the shard lease, completion and the one reader.

`guard` stops a run whose first inputs all fail with one storage-level cause; `lease` keeps
one live process per shard; `reader` is the one way to read committed rows (through the
commit logs, never a glob). The commit log itself and the writer live in `batchrun.commit.out` and
`batchrun.commit.writer`.
"""
