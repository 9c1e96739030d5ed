"""skutag: tag product catalogs with image classifiers (train, export to ONNX, batch-predict to Parquet)."""

__version__ = "0.4.0"
