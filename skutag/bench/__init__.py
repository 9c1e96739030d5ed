"""`skutag bench`: latency, throughput and accuracy of exported models, side by side."""
