"""Saliency maps of one model output: :class:`SaliencyMap`, built on PAIR's ``saliency.core``.

Every method returns the signed attribution summed over colour channels, ``(H, W)``
float32, so integrated gradients keep their completeness property (the map sums to
``f(x) - f(baseline)``). Absolute values and normalisation are left to
:mod:`histoatlas.saliency.plot_utils`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from histoatlas.backends import as_loaded_model
from histoatlas.backends.gradients import check_class_idx
from histoatlas.errors import ModelError
from histoatlas.saliency.methods import (
    METHODS,
    check_image,
    check_method,
    core_method,
    get_mask_keywords,
    method_options,
)
from histoatlas.saliency.smooth import smooth_options, smoothed_mask


class SaliencyMap:
    """Pixel attribution for one output class of a model.

    Parameters
    ----------
    model : torch.nn.Module, keras.Model or LoadedModel
        A bare torch module taking ``(B, 3, H, W)``, a bare Keras model taking
        ``(B, H, W, 3)``, or what :func:`histoatlas.load_model` returns (PyTorch or Keras).
    class_idx : int or str
        The output to explain: its index, or its name when the model has
        ``class_names``.
    device : str, optional
        Where a bare module runs (default: where a torch module's parameters are; the
        first GPU, else the CPU, for Keras).
    activation : {None, "softmax", "sigmoid"}
        None explains the network's raw output (the logit of a classifier, whose
        gradients do not saturate); otherwise the probability after that activation.

    Attributes
    ----------
    class_idx : int
    call_model_function : callable
        The framework's gradient function, as ``saliency.core`` calls it.
    call_model_args : dict
        What every call passes to it (``class_idx``, ``activation``).

    Raises
    ------
    ModelError
        ``class_idx`` is out of range or names no class (raised on the first call
        when the number of outputs is only known from a forward pass).

    Notes
    -----
    Inputs are preprocessed tiles, ``(H, W, 3)`` float32 channels last, as
    ``histoatlas.get_preprocess_fn(model_path)`` makes them; the torch backend
    transposes them to ``(1, 3, H, W)``, Keras takes them as they are. Every method
    takes ``smooth``: True averages the map over 25 noisy copies of the input
    (SmoothGrad, as ``GetSmoothedMask``; see :func:`smoothed_mask`); a dict overrides
    :data:`SMOOTH_DEFAULTS` (``stdev_spread``, ``nsamples``, ``magnitude``, ``seed``).
    Unlike PAIR's default, the average is signed (``magnitude=False``), as every other
    map here is.

    Examples
    --------
    >>> from histoatlas.backends.torch.architectures import demo_cnn
    >>> net = demo_cnn(num_classes=3).eval()
    >>> sm = SaliencyMap(net, class_idx=1)
    >>> img = np.random.default_rng(0).normal(size=(64, 64, 3)).astype(np.float32)
    >>> sm.integrated_gradients(img).shape
    (64, 64)
    """

    def __init__(
        self,
        model: Any,
        class_idx: int | str,
        *,
        device: str | None = None,
        activation: str | None = None,
    ) -> None:
        self.backend = as_loaded_model(model, device=device).gradients()
        self.class_idx = _resolve_class(class_idx, self.backend.class_names)
        n_classes = self.backend.num_classes()
        if n_classes is not None:
            check_class_idx(self.class_idx, n_classes)
        if activation not in (None, "softmax", "sigmoid"):
            raise ModelError(f"activation {activation!r} is not one of None, 'softmax', 'sigmoid'")
        self.call_model_args = {"class_idx": self.class_idx, "activation": activation}

    @property
    def call_model_function(self):
        """The gradient function ``saliency.core`` methods call (the backend)."""
        return self.backend

    # -- methods (options: histoatlas.saliency.methods) ----------------------------------

    def vanilla(self, img: np.ndarray, *, smooth: bool | dict = False) -> np.ndarray:
        """Vanilla gradients of ``img``, ``(H, W, 3)`` float32 preprocessed (``(H, W)`` out)."""
        return self.compute("vanilla", img, smooth=smooth)

    def integrated_gradients(self, img: np.ndarray, **options: Any) -> np.ndarray:
        """Integrated gradients (``x_steps``, ``batch_size``, ``baseline``, ``smooth``)."""
        return self.compute("integrated_gradients", img, **options)

    def guided_integrated_gradients(self, img: np.ndarray, **options: Any) -> np.ndarray:
        """Guided IG (``x_steps``, ``max_dist``, ``fraction``, ``baseline``, ``smooth``)."""
        return self.compute("guided_integrated_gradients", img, **options)

    def blur_integrated_gradients(self, img: np.ndarray, **options: Any) -> np.ndarray:
        """Blur IG (``max_sigma``, ``steps``, ``grad_step``, ``sqrt``, ``batch_size``)."""
        return self.compute("blur_integrated_gradients", img, **options)

    def xrai(self, img: np.ndarray, **options: Any) -> np.ndarray:
        """XRAI (``batch_size``, ``steps``, ``fast``, ``area_threshold``, ``baselines``)."""
        return self.compute("xrai", img, **options)

    def gradcam(self, img: np.ndarray, **options: Any) -> np.ndarray:
        """Grad-CAM (``layer``, ``smooth``), upsampled to the tile.

        Raises
        ------
        LayerError
            ``layer`` is not a layer of the model.
        """
        return self.compute("gradcam", img, **options)

    # -- any of them ----------------------------------------------------------------------

    def compute(
        self, method: str, img: np.ndarray, *, smooth: bool | dict = False, **options: Any
    ) -> np.ndarray:
        """Run one method by name.

        Parameters
        ----------
        method : str
            One of :data:`METHODS`.
        img : ndarray, shape (H, W, 3), dtype float32
            A preprocessed tile.
        smooth : bool or dict
            SmoothGrad (see the class notes).
        **options
            That method's options (see :mod:`histoatlas.saliency.methods`).

        Returns
        -------
        ndarray, shape (H, W), dtype float32

        Raises
        ------
        ConfigError
            Unknown method, or an option the method does not take.
        """
        options = method_options(method, options)
        img = check_image(img)
        if method == "gradcam":  # the only method that reads a layer: the backend picks it
            return self._gradcam(img, options["layer"], smooth)
        kwargs = get_mask_keywords(method, options, img)
        return self._run(core_method(method), img, smooth, **kwargs)

    def all(
        self,
        img: np.ndarray,
        *,
        methods: Sequence[str] | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        smooth: bool | dict = False,
    ) -> dict[str, np.ndarray]:
        """Every method (or those named) on one tile.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
        methods : list of str, optional
            Subset and order of :data:`METHODS` (default: all).
        params : dict, optional
            Method name -> its keyword options, e.g. ``{"gradcam": {"layer": "block3"}}``.
        smooth : bool or dict
            SmoothGrad for every method (a method's own ``smooth`` in ``params`` wins).

        Returns
        -------
        dict of str to ndarray, shape (H, W), dtype float32
            In the order of ``methods``.

        Raises
        ------
        ConfigError
            Unknown method or option.
        """
        methods = list(METHODS if methods is None else methods)
        params = dict(params or {})
        for name in sorted(set(params) - set(methods)):
            check_method(name)
        return {m: self.compute(m, img, **{"smooth": smooth, **params.get(m, {})}) for m in methods}

    def _gradcam(self, img: np.ndarray, layer: str | None, smooth) -> np.ndarray:
        from skimage.transform import resize

        layer = self.backend.resolve_layer(layer, img)
        cam = self._run(
            core_method("gradcam"),
            img,
            smooth,
            call_model_args={**self.call_model_args, "layer": layer},
            should_resize=False,
            three_dims=False,
        )
        return resize(cam, img.shape[:2]).astype(np.float32)

    # -- internals ----------------------------------------------------------------------

    def _run(
        self,
        method: Any,
        img: np.ndarray,
        smooth: bool | dict,
        *,
        call_model_args: dict | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        img = check_image(img)
        args = self.call_model_args if call_model_args is None else call_model_args
        fn = self.call_model_function
        if smooth:
            mask = smoothed_mask(method, img, fn, args, **smooth_options(smooth), **kwargs)
        else:
            mask = method.GetMask(img, fn, args, **kwargs)
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask.sum(axis=-1)
        return mask.astype(np.float32)


def _resolve_class(class_idx: int | str, class_names: Sequence[str]) -> int:
    if isinstance(class_idx, str):
        if class_idx not in class_names:
            known = ", ".join(class_names) if class_names else "none (the model names no classes)"
            raise ModelError(f"class {class_idx!r} not among the model's classes: {known}")
        return list(class_names).index(class_idx)
    if isinstance(class_idx, bool):
        raise ModelError(f"class_idx must be an integer or a class name, got {class_idx!r}")
    try:
        return operator.index(class_idx)
    except TypeError:
        raise ModelError(
            f"class_idx must be an integer or a class name, got {class_idx!r}"
        ) from None
