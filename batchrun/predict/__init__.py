"""Predict: a Batch -> `infer.Predictions` (top-k, embeddings, OOD score).

`model` reads and checks the model's contract (card and ONNX signature, cached by
`signature`); `infer` opens the ONNX Runtime session and builds the predictor
(`infer.assemble_predictor`, the one both engines use); `review` adds the review columns.
"""
