"""Training a small classifier in torch: the demo CNN's training step (:class:`Trainer`).

The demo (:mod:`histoatlas.demo.train`) runs the loop — epochs, augmentation, time budget —
and asks a backend's ``Trainer`` for one optimisation step at a time; the Keras backend has
the same class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.backends.training import TrainingSpec

WEIGHTS_FILE = "weights.pt"


class Trainer:
    """Adam on class-weighted cross-entropy for :func:`demo_cnn`, normalised inputs.

    Parameters
    ----------
    spec : TrainingSpec
    """

    weights_file = WEIGHTS_FILE

    def __init__(self, spec: TrainingSpec) -> None:
        import torch

        torch.set_num_threads(spec.num_threads)
        torch.manual_seed(spec.seed)
        model = demo_cnn(num_classes=spec.n_classes, width=spec.width)
        # channels-last convolutions run about twice as fast on CPU (measured here)
        self.model = model.to(memory_format=torch.channels_last)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=spec.learning_rate)
        weight = torch.tensor(spec.class_weights, dtype=torch.float32)
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
        self.mean = np.asarray(spec.mean, np.float32)
        self.std = np.asarray(spec.std, np.float32)

    def _input(self, tiles: np.ndarray):
        import torch

        x = (tiles.astype(np.float32) / 255.0 - self.mean) / self.std
        # NHWC memory seen as NCHW: torch's channels-last layout, no copy
        return torch.from_numpy(x).permute(0, 3, 1, 2)

    def step(self, tiles: np.ndarray, labels: np.ndarray) -> float:
        """One optimisation step on uint8 tiles ``(B, H, W, 3)``; returns the batch's loss."""
        import torch

        self.model.train()
        self.optimiser.zero_grad()
        loss = self.loss_fn(self.model(self._input(tiles)), torch.from_numpy(labels))
        loss.backward()
        self.optimiser.step()
        return loss.item()

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Predicted class ``(B,)`` of uint8 tiles, in eval mode."""
        import torch

        self.model.eval()
        with torch.no_grad():
            return self.model(self._input(tiles)).argmax(1).numpy()

    def save(self, path: Path) -> None:
        """Write the state dict (contiguous tensors) to ``path``."""
        import torch

        torch.save({k: v.contiguous() for k, v in self.model.state_dict().items()}, path)
