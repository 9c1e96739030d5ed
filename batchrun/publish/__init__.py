"""`skutag publish`: merge a finished OUT into a Delta Lake table keyed by `id` (night.py: what changed;
delta.py: the merge, its transaction and its metadata)."""
