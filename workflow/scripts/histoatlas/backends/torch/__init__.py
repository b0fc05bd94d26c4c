"""The PyTorch backend: models rebuilt from a model directory, TorchScript files, activations
through forward hooks, gradients for saliency, the demo CNN and its training loop."""
