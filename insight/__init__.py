"""Catalog insight over batch runs: a nearest-neighbour index, similar products, near duplicates.

Needs the optional extra `insight` (faiss-cpu, grad-cam), imported through `skutag.extras.require`.
It sits above the trainer and batchrun (it reads their outputs); neither imports it. Grad-CAM
(`skutag explain`) lives in the trainer, which draws it in its reports.
"""
