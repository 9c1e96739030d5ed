"""batchrun: stream a catalog through ONNX Runtime into Parquet, one row per input, resumable.

sources -> loader (DataLoader workers decode via skutag.images) -> infer (one ORT session)
-> writer (Parquet parts + _manifest.json) ; api.run_catalog ties them together, cli.run wraps it.
"""
