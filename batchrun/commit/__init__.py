"""What makes OUT trustworthy: the OUT layout and commit log, the unit writer, the guard, the lease, the one reader.

`out` names OUT's files and holds the commit log (`CommitLog` of `CommitEntry`, on disk
`_commits[.TAG].json`; 0.3's `_manifest[.TAG].json` is still read); `writer` assembles each
unit's rows in plan order and commits its part (`UnitWriter`, the prediction schema);
`guard` stops a run whose first inputs all fail with one storage-level cause; `lease` keeps
one live process per shard; `reader` is the one way to read committed rows (through the
commit logs, never a glob), for `--since`, `--retry-errors` and `skutag index`.
"""
