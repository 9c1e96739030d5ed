"""The plan and the work list: what a run has to do, fixed before anything is decoded.

`catalog` lists SOURCE... once into `OUT/_plan/` (a `Plan` of sorted, numbered `Unit`s);
`shard` picks a shard's units; `reuse` says what must match to copy an earlier run's rows;
`incremental` matches a unit's rows against `--since` / `--retry-errors` rows; `work` turns
the pending units into the shard's `WorkList` (rows to copy, distinct images to decode).
"""
