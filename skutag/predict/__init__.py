"""`skutag predict`: point a model at a few photos and read the top-k labels.

`model.open_model` loads any model skutag makes through its own runtime: a carded ONNX
file through the same contract check and session `skutag run` opens (`batchrun.predict`),
an edge file (.pte, .tflite, .xml, .mlpackage) through its format's runner
(`exporter.formats.load_runner`, verified against its export report), and a run dir or
`.safetensors` through PyTorch with the exporter's in-graph preprocessing
(`exporter.graph.ExportModule`). `model.predict_files` decodes each image as a batch run
does (`skutag.images.load_image` with the card's sizes); an image that cannot be decoded
is a row with its error, never a stopped command. `cli` prints the table or JSON.
"""
