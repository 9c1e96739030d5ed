"""What makes OUT trustworthy: the OUT layout and commit log, the unit writer, the guard, the lease, the one reader.

`out` names OUT's files and holds the commit log (`CommitLog` of `CommitEntry`, on disk
`_commits[.TAG].json`; 0.3's `_manifest[.TAG].json` is still read); `writer` assembles each
unit's rows in plan order and commits its part (`UnitWriter`, the prediction schema);
`guard` judges the store (a systemic fault: exit 4; an outage: exit 75); `lease` keeps
one live process per shard; `signals` turns SIGTERM / SIGINT into a clean stop (exit 75,
lease released); `reader` is the one way to read committed rows (through the commit logs,
never a glob), for `--since`, `--retry-errors` and `skutag index`.
"""
