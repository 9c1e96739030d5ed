"""batchrun: stream a catalog through ONNX Runtime into Parquet, one row per planned input, resumable.

The chain, and the typed object at each boundary:

    SOURCE...  --plan/catalog-->   Plan (OUT/_plan/: sorted, numbered Units)
               --plan/work---->    WorkList (per pending Unit: rows to copy, images to decode)
               --decode/------>    Batch (decode.loader: uint8 pixels + each row's facts)
               --predict/----->    Predictions (predict.infer: top-k, embedding, OOD score)
               --commit/------>    CommitEntry (commit.out: one part-NNNNN.parquet, listed in
                                   the shard's commit log _commits[.TAG].json)

`engines/` drive decode -> predict -> commit for a shard (`local`: DataLoader workers and one
ORT session; `ray`: Ray Data), through one `commit.writer.UnitWriter`. `api.run_catalog` ties
the chain together (`skutag run`), `api.plan_catalog` stops after the plan (`skutag plan`);
`cli` wraps both, `options.RunOptions` carries every setting, `metrics` writes
`--metrics-file`, `arrow` holds the Arrow helpers every stage uses.
"""
