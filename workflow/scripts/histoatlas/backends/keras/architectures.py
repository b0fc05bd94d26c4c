"""histoatlas's own networks in Keras 3, and copying torch weights into them.

:func:`demo_cnn_keras` is :func:`histoatlas.backends.torch.architectures.demo_cnn` layer for layer,
with the same layer names where torch has modules (``block3`` is the output of the third
block in both), so a config written for one backend reads the same layers from the other,
and :func:`copy_torch_weights` makes the two compute the same function.
"""

from __future__ import annotations

import numpy as np

from histoatlas.backends.keras.model import keras3
from histoatlas.errors import ModelError


def demo_cnn_keras(num_classes: int = 2, width: int = 16, *, tile_px: int | None = None):
    """Build the demo CNN in Keras 3 (channels last).

    Four blocks (``blockN.0`` conv 3x3 same-padded, ``blockN.1`` ReLU, ``blockN`` 2x2
    max-pool), ``pool`` (global average), ``flatten`` and the linear classifier ``fc``:
    the names and the function of the torch ``demo_cnn`` (whose ``blockN`` is a
    Sequential ending in the max-pool).

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier (logits; no activation).
    width : int
        Channels of the first block; blocks have width, 2*width, 4*width, 4*width.
    tile_px : int, optional
        Input edge; None accepts any size.

    Returns
    -------
    keras.Model
        A functional model named ``demo_cnn``.
    """

    keras = keras3()
    layers = keras.layers
    inputs = keras.Input((tile_px, tile_px, 3), name="input")
    x = inputs
    for i, channels in enumerate([width, 2 * width, 4 * width, 4 * width], start=1):
        x = layers.Conv2D(channels, 3, padding="same", name=f"block{i}.0")(x)
        x = layers.ReLU(name=f"block{i}.1")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


def copy_torch_weights(keras_model, torch_module) -> list[str]:
    """Copy every ``Conv2d`` and ``Linear`` of a torch module into the same-named Keras layer.

    Conv kernels go from torch's ``(out, in, kh, kw)`` to Keras's ``(kh, kw, in, out)``,
    linear weights are transposed. Only layers whose input needs no reordering between
    the frameworks qualify: a ``Linear`` must follow global pooling (as in the demo CNN),
    not a flattened feature map, whose element order differs (C, H, W vs H, W, C).

    Parameters
    ----------
    keras_model : keras.Model
    torch_module : torch.nn.Module

    Returns
    -------
    list of str
        The names copied.

    Raises
    ------
    ModelError
        A torch layer has no Keras layer of the same name, or their shapes differ.
    """
    from torch import nn

    copied = []
    names = {layer.name for layer in keras_model.layers}
    for name, module in torch_module.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        if name not in names:
            raise ModelError(f"torch layer {name!r} has no Keras layer of that name")
        weight = module.weight.detach().cpu().numpy()
        kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T
        values = [kernel]
        if module.bias is not None:
            values.append(module.bias.detach().cpu().numpy())
        layer = keras_model.get_layer(name)
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if shapes != [v.shape for v in values]:
            raise ModelError(
                f"layer {name!r}: torch weights {[v.shape for v in values]} do not fit the "
                f"Keras layer's {shapes}"
            )
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
        copied.append(name)
    return copied
