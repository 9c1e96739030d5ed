"""Decode: a WorkList's images -> `loader.Batch` (uint8 pixels plus each row's facts).

`loader` reads and decodes one input (`decode_one`) and collates samples into a Batch;
`supervise` runs the DataLoader workers and replaces one that dies or hangs; `contained`
decodes in a child process with a time limit (Ray's decode tasks, `--workers 0`, and JPEGs
the GPU hands back); `gpu` and `jpeg_probe` decode JPEGs on the GPU (`--decode gpu`).
"""
