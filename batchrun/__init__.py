"""batchrun: stream a catalog through ONNX Runtime into Parquet, one row per planned input, resumable.

plan (OUT/_plan/, listed once) -> work (rows to copy, images to decode) -> engine (local:
supervised DataLoader workers + one ORT session; ray: Ray Data) -> writer (one Parquet part
per unit + _manifest.json); api.run_catalog ties them together, cli.run wraps it.
"""
