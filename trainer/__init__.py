"""Fine-tuning of torchvision classifiers: data, model, freeze policy, loop, checkpoints, reports, eval."""
