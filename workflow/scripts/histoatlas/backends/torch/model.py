"""The PyTorch backend's :class:`~histoatlas.backends.base.LoadedModel`: :class:`TorchModel`.

A uint8 batch crosses to the device as bytes and is normalised there; activations come from
forward hooks (:mod:`~histoatlas.backends.torch.forward`); gradients for saliency from
autograd (:mod:`~histoatlas.backends.torch.gradients`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from histoatlas import runtime
from histoatlas.backends.base import PRECISIONS, LoadedModel
from histoatlas.backends.torch.forward import HookedForward, pipelined_batches
from histoatlas.backends.torch.gradients import TorchGradients
from histoatlas.backends.torch.transform import InputTransform, model_view
from histoatlas.errors import ConfigError


class TorchModel(LoadedModel):
    """A :class:`LoadedModel` whose network is a ``torch.nn.Module``."""

    @property
    def supports_layers(self) -> bool:
        """False for TorchScript, whose forward hooks never fire."""
        return self.kind != "torchscript"

    def layer_names(self) -> list[str]:
        """Module names as ``dict(model.named_modules())`` gives them (root excluded).

        Empty for a TorchScript model, which offers its final output only.
        """
        if not self.supports_layers:
            return []
        return [name for name, _ in self.model.named_modules() if name]

    def to(self, device: str | None) -> TorchModel:
        """Move the network to ``device`` (None: CUDA, then MPS, then CPU); returns self."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        if self.device.startswith("cuda"):
            import torch

            # tiles arrive channels-last (uint8 NHWC); keeping the weights so too lets
            # cuDNN run its NHWC kernels without converting every layer
            self.model.to(memory_format=torch.channels_last)
        self._stats = None
        return self

    def to_tensor(self, images):
        """Turn a batch into the network's input on its device.

        Parameters
        ----------
        images : ndarray or torch.Tensor
            uint8 ``(B, H, W, 3)`` (or one ``(H, W, 3)`` tile) raw RGB, resized and
            cropped when params.json gives ``input_px``, then normalised, here on the
            device; or a floating torch tensor ``(B, 3, H, W)`` taken as already
            preprocessed (network input size) and only moved to the device.

        Returns
        -------
        torch.Tensor, shape (B, 3, h, w), dtype float32
        """
        import torch

        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise ValueError(
                    f"numpy tiles must be uint8 RGB (B, H, W, 3), got dtype {images.dtype}; "
                    "pass preprocessed input as a float torch tensor (B, 3, H, W) instead"
                )
            # a read-only array (a tile straight from PIL) is copied: torch would warn
            images = np.ascontiguousarray(images) if images.flags.writeable else images.copy()
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected a numpy array or torch tensor, got {type(images).__name__}")
        if images.dtype.is_floating_point:
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(
                    "a float tensor is taken as preprocessed (B, 3, H, W), "
                    f"got {tuple(images.shape)}"
                )
            return images.to(self.device, torch.float32)
        if images.dtype != torch.uint8:
            raise ValueError(f"tiles must be uint8 or float, got {images.dtype}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 tiles must be (B, H, W, 3), got {tuple(images.shape)}")
        on_cuda = self.device.startswith("cuda")
        if on_cuda and images.device.type == "cpu":
            # pinned host memory lets the copy run asynchronously
            images = images.pin_memory()
        x = images.to(self.device, non_blocking=on_cuda).permute(0, 3, 1, 2).float()
        x = self.input_transform(x)  # resize and crop as params.json says (input_px)
        mean, std = self._device_stats()
        return (x - mean) / std

    @property
    def input_transform(self) -> InputTransform:
        """The resize and centre crop on the way into the network (see
        :mod:`histoatlas.backends.torch.transform`)."""
        transform = getattr(self, "_transform", None)
        if transform is None:
            transform = self._transform = InputTransform(self.params)
        return transform

    def model_view(self, images) -> np.ndarray:
        """uint8 tiles as the network sees them: through :attr:`input_transform` (on the
        CPU, the same operations as on the device), not normalised."""
        return model_view(self.input_transform, images)

    def _device_stats(self):
        import torch

        stats = getattr(self, "_stats", None)
        if stats is None:
            shape = (1, 3, 1, 1)
            mean = torch.tensor(self.params.mean, dtype=torch.float32).view(shape) * 255
            std = torch.tensor(self.params.std, dtype=torch.float32).view(shape) * 255
            stats = self._stats = (mean.to(self.device), std.to(self.device))
        return stats

    # -- activations --------------------------------------------------------------------

    def feature_function(self, layers: Sequence[str], *, pooling: str | None, precision: str):
        """Pooled activations of ``layers`` by forward hooks, and the final output.

        See :class:`histoatlas.backends.torch.forward.HookedForward`.
        """

        return HookedForward(self, layers, pooling=pooling, precision=precision)

    def activate(self, final, output: str):
        """Softmax / sigmoid / identity over ``(B, C)``, on the device."""
        if output == "softmax":
            return final.softmax(dim=1)
        if output == "sigmoid":
            return final.sigmoid()
        return final

    def to_host(self, array) -> np.ndarray:
        """A tensor (or numpy array) as a numpy array on the host."""
        return array if isinstance(array, np.ndarray) else array.cpu().numpy()

    def check_precision(self, precision: str) -> str:
        """float32 anywhere; bfloat16 on CUDA or the CPU; float16 on CUDA (autocast)."""
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        device = self.device.split(":")[0]
        if precision != "float32" and device not in ("cuda", "cpu"):
            return super().check_precision(precision)
        if device == "cpu" and precision == "float16":
            raise ConfigError(
                "precision 'float16' is for CUDA; on the CPU use 'bfloat16' (fast on CPUs with "
                "AVX-512 BF16 or AMX) or 'float32'"
            )
        return precision

    def cpu_threads(self, num_readers: int | None) -> AbstractContextManager[int]:
        """On the CPU, torch's threads leave cores to the readers; on a GPU, all stay."""
        import torch

        if not self.device.startswith("cpu"):
            return contextlib.nullcontext(torch.get_num_threads())
        current = torch.get_num_threads()
        return runtime.torch_threads(runtime.threads_beside_readers(num_readers, current=current))

    def forward_batches(
        self, batches: Iterable, run: Callable[[Any], tuple[Any, Any]], *, prefetch_depth: int = 2
    ) -> Iterator[tuple[Any, np.ndarray, np.ndarray | None]]:
        """As :meth:`LoadedModel.forward_batches`; on CUDA pipelined (see
        :func:`histoatlas.backends.torch.forward.pipelined_batches`)."""
        if not self.device.startswith("cuda"):
            yield from super().forward_batches(batches, run, prefetch_depth=prefetch_depth)
            return

        yield from pipelined_batches(self, batches, run, prefetch_depth=max(1, prefetch_depth))

    # -- gradients ----------------------------------------------------------------------

    def gradients(self):
        """Autograd's input and layer gradients (:class:`TorchGradients`)."""

        return TorchGradients(
            self.model,
            device=self.device,
            class_names=self.class_names,
            supports_layers=self.supports_layers,
        )


def resolve_device(device: str | None = None) -> str:
    """Pick the torch device: ``device`` if given, else CUDA, then MPS, then CPU.

    Raises
    ------
    ConfigError
        If ``device`` is not a torch device name, or names CUDA/MPS where it is absent.
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"device {device!r} is not a torch device (cuda, mps, cpu): {e}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested, but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested, but MPS is not available here")
    return str(dev)
