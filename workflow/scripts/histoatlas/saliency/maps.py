"""Saliency maps of one model output: :class:`SaliencyMap`, built on PAIR's ``saliency.core``.

Every method returns the signed attribution summed over colour channels, ``(H, W)``
float32, so integrated gradients keep their completeness property (the map sums to
``f(x) - f(baseline)``). Absolute values and normalisation are left to
:mod:`histoatlas.saliency.plot_utils`.
"""

from __future__ import annotations

import inspect
import operator
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas.atomic import atomic_output, partial_path
from histoatlas.backends import as_loaded_model
from histoatlas.backends.base import check_class_idx
from histoatlas.errors import ConfigError, EmptyDatasetError, ModelError
from histoatlas.runtime import patch_guided_ig_quantile

METHODS = (
    "vanilla",
    "integrated_gradients",
    "guided_integrated_gradients",
    "blur_integrated_gradients",
    "xrai",
    "gradcam",
)
# SmoothGrad: PAIR's defaults, except signed averaging (magnitude=False) so the map keeps
# its sign as every other map here does; "seed" makes the noise reproducible (None: not)
SMOOTH_DEFAULTS = {"stdev_spread": 0.15, "nsamples": 25, "magnitude": False, "seed": 0}


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

    # -- methods ------------------------------------------------------------------------

    def vanilla(self, img: np.ndarray, *, smooth: bool | dict = False) -> np.ndarray:
        """Vanilla gradients: the gradient of the explained output with respect to the input.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
        """
        import saliency.core as sc

        return self._run(sc.GradientSaliency(), img, smooth)

    def integrated_gradients(
        self,
        img: np.ndarray,
        *,
        x_steps: int = 25,
        batch_size: int = 20,
        baseline: np.ndarray | float | None = None,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """Integrated gradients along the straight line from ``baseline`` to ``img``.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        x_steps : int
            Riemann steps along the path.
        batch_size : int
            Path points per forward pass.
        baseline : ndarray or float, optional
            Start of the path, in preprocessed space; default zeros, i.e. the
            normalisation mean colour (a flat grey tile for ImageNet statistics).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
            Sums to about ``f(img) - f(baseline)`` for the explained output.
        """
        import saliency.core as sc

        img = _check_image(img)
        return self._run(
            sc.IntegratedGradients(),
            img,
            smooth,
            x_baseline=_baseline(baseline, img),
            x_steps=x_steps,
            batch_size=batch_size,
        )

    def guided_integrated_gradients(
        self,
        img: np.ndarray,
        *,
        x_steps: int = 25,
        max_dist: float = 1.0,
        fraction: float = 0.5,
        baseline: np.ndarray | float | None = None,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """Guided integrated gradients (an adaptive path that avoids noisy regions).

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        x_steps : int
            Steps along the path (one forward pass each).
        max_dist : float
            How far in [0, 1] (relative L1) the path may leave the straight line.
        fraction : float
            Fraction of features moved at each step.
        baseline : ndarray or float, optional
            Start of the path; default zeros (see :meth:`integrated_gradients`).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
        """
        import saliency.core as sc

        patch_guided_ig_quantile()
        img = _check_image(img)
        return self._run(
            sc.GuidedIG(),
            img,
            smooth,
            x_baseline=_baseline(baseline, img),
            x_steps=x_steps,
            max_dist=max_dist,
            fraction=fraction,
        )

    def blur_integrated_gradients(
        self,
        img: np.ndarray,
        *,
        max_sigma: float = 50,
        steps: int = 100,
        grad_step: float = 0.01,
        sqrt: bool = False,
        batch_size: int = 20,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """Integrated gradients along a path of ever stronger Gaussian blur.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        max_sigma : float
            Blur (pixels) at the start of the path.
        steps, grad_step, sqrt
            Path resolution, as ``saliency.core.BlurIG``.
        batch_size : int
            Path points per forward pass.
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
        """
        import saliency.core as sc

        return self._run(
            sc.BlurIG(),
            img,
            smooth,
            max_sigma=max_sigma,
            steps=steps,
            grad_step=grad_step,
            sqrt=sqrt,
            batch_size=batch_size,
        )

    def xrai(
        self,
        img: np.ndarray,
        *,
        batch_size: int = 20,
        steps: int = 100,
        fast: bool = False,
        area_threshold: float = 1.0,
        baselines: Sequence[np.ndarray] | None = None,
        smooth: bool | dict = False,
    ) -> np.ndarray:
        """XRAI: integrated gradients pooled over image segments, ranked by density.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        batch_size : int
            Path points per forward pass.
        steps : int
            Integrated-gradients steps per baseline.
        fast : bool
            The approximate algorithm (segments ranked once, ignoring overlaps).
        area_threshold : float
            Fraction of the image ranked segment by segment (the rest is one segment).
        baselines : list of ndarray, optional
            IG baselines; default XRAI's own, a black and a white tile (the minimum and
            maximum of ``img``).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
            Each pixel holds the attribution density of its segment.
        """
        import saliency.core as sc

        params = sc.XRAIParameters(
            steps=steps, area_threshold=area_threshold, algorithm="fast" if fast else "full"
        )
        return self._run(
            sc.XRAI(),
            img,
            smooth,
            batch_size=batch_size,
            baselines=baselines,
            extra_parameters=params,
        )

    def gradcam(
        self, img: np.ndarray, *, layer: str | None = None, smooth: bool | dict = False
    ) -> np.ndarray:
        """Grad-CAM: a layer's feature maps weighted by their mean gradient, then ReLU.

        Parameters
        ----------
        img : ndarray, shape (H, W, 3), dtype float32
            Preprocessed tile.
        layer : str, optional
            Module name (``dict(model.named_modules())``) or Keras layer name; default:
            the last convolutional feature map with h, w > 1 (see
            ``TorchGradients.resolve_layer``, ``KerasGradients.resolve_layer``).
        smooth : bool or dict
            SmoothGrad (see the class notes).

        Returns
        -------
        ndarray, shape (H, W), dtype float32
            The map at the layer's resolution, bilinearly upsampled to the tile, not
            normalised (``saliency.core``'s own resize divides by the maximum).

        Raises
        ------
        LayerError
            ``layer`` is not a module of the model.
        """
        import saliency.core as sc
        from skimage.transform import resize

        img = _check_image(img)
        layer = self.backend.resolve_layer(layer, img)
        cam = self._run(
            sc.GradCam(),
            img,
            smooth,
            call_model_args={**self.call_model_args, "layer": layer},
            should_resize=False,
            three_dims=False,
        )
        return resize(cam, img.shape[:2]).astype(np.float32)

    # -- several at once ------------------------------------------------------------------

    def compute(self, method: str, img: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Run one method by name, with its keyword arguments.

        Parameters
        ----------
        method : str
            One of :data:`METHODS`.
        img : ndarray, shape (H, W, 3), dtype float32
        **kwargs
            That method's options (``x_steps``, ``smooth``, ...).

        Returns
        -------
        ndarray, shape (H, W), dtype float32

        Raises
        ------
        ConfigError
            Unknown method, or an option the method does not take.
        """
        fn = getattr(self, _check_method(method))
        accepted = [p for p in inspect.signature(fn).parameters if p != "img"]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(
                f"saliency method {method!r} takes no option(s) {unknown}; "
                f"its options: {', '.join(accepted)}"
            )
        return fn(img, **kwargs)

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
        extra = sorted(set(params) - set(methods))
        for name in extra:
            _check_method(name)
        return {m: self.compute(m, img, **{"smooth": smooth, **params.get(m, {})}) for m in methods}

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
        img = _check_image(img)
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


def smooth_options(smooth: bool | Mapping[str, Any]) -> dict[str, Any]:
    """SmoothGrad options: :data:`SMOOTH_DEFAULTS` updated by ``smooth`` when it is a dict.

    Raises
    ------
    ConfigError
        A key that SmoothGrad does not take.
    """
    opts = dict(SMOOTH_DEFAULTS)
    if isinstance(smooth, Mapping):
        unknown = sorted(set(smooth) - set(SMOOTH_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"smooth option(s) {unknown} unknown; SmoothGrad takes {sorted(SMOOTH_DEFAULTS)}"
            )
        opts.update(smooth)
    return opts


def smoothed_mask(
    method: Any,
    x_value: np.ndarray,
    call_model_function: Callable,
    call_model_args: Any = None,
    *,
    stdev_spread: float = 0.15,
    nsamples: int = 25,
    magnitude: bool = False,
    seed: int | None = 0,
    **kwargs: Any,
) -> np.ndarray:
    """SmoothGrad: ``saliency.core``'s ``GetSmoothedMask``, for masks of any shape.

    The same average as ``method.GetSmoothedMask``, with the noise it would draw after
    ``np.random.seed(seed)``, but from a private ``RandomState`` (NumPy's global RNG is
    left alone), and summed from the first mask rather than ``zeros_like(x_value)``, so
    that it also works for Grad-CAM and XRAI, whose masks are not shaped like the input.

    Parameters
    ----------
    method : saliency.core.CoreSaliency
    x_value : ndarray
        Input.
    call_model_function, call_model_args
        As ``GetMask`` takes them.
    stdev_spread : float
        Noise standard deviation, as a fraction of ``max(x) - min(x)``.
    nsamples : int
        Noisy copies averaged.
    magnitude : bool
        Average squared masks (unsigned) instead of the masks.
    seed : int or None
        Seeds the noise; None draws fresh noise on every call.
    **kwargs
        Passed to ``method.GetMask``.

    Returns
    -------
    ndarray, dtype float32
    """
    if int(nsamples) < 1:
        raise ConfigError(f"smooth nsamples must be >= 1, got {nsamples}")
    # RandomState, not Generator: its stream is the one GetSmoothedMask draws from
    rng = np.random.RandomState(seed)
    stdev = stdev_spread * (np.max(x_value) - np.min(x_value))
    total = None
    for _ in range(int(nsamples)):
        noise = rng.normal(0, stdev, x_value.shape)
        mask = np.asarray(
            method.GetMask(x_value + noise, call_model_function, call_model_args, **kwargs),
            dtype=np.float32,
        )
        if magnitude:
            mask = mask * mask
        total = mask if total is None else total + mask
    return total / np.float32(nsamples)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
    return method


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


def _check_image(img: Any) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3:
        raise ValueError(f"img must be one preprocessed tile (H, W, 3), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(
            f"img has dtype {img.dtype}; pass the preprocessed tile (float32), e.g. "
            "histoatlas.get_preprocess_fn(model_path)(tile)"
        )
    return img.astype(np.float32, copy=False)


def _baseline(baseline: np.ndarray | float | None, img: np.ndarray) -> np.ndarray:
    if baseline is None:
        return np.zeros_like(img)
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), img.shape)
    return np.array(base)


# -- the workflow's writer --------------------------------------------------------------


def write_saliency_maps(
    tiles,
    model: Any,
    *,
    maps_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    overview_png: str | os.PathLike,
    methods: Sequence[str] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    smooth: bool | dict = False,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    read_tile: Callable[[Any], np.ndarray] | None = None,
    alpha: float = 0.5,
):
    """Compute and save the maps of every selected tile, a manifest and an overview.

    Writes ``{maps_dir}/{name}/{method}.npy`` (the ``(H, W)`` float32 mask),
    ``{method}.png`` (inferno heatmap) and ``{method}_overlay.png`` per tile and method;
    the whole folder appears at once (built beside it, then renamed), so a killed job
    leaves no half-filled ``maps_dir``. ``manifest`` lists every file written,
    ``overview_png`` shows one row per tile and one column per method.

    Parameters
    ----------
    tiles : pandas.DataFrame
        ``tiles.csv`` as :func:`histoatlas.saliency.select.select_tiles` writes it
        (without a ``name`` column, names are made as that function makes them).
    model : LoadedModel, torch.nn.Module or keras.Model
        The network; a bare module or Keras model needs ``preprocess``.
    maps_dir, manifest, overview_png : path
        Outputs (a folder, a CSV, a PNG).
    methods : list of str, optional
        Subset of :data:`METHODS` (default: all), in column order.
    method_params : dict, optional
        Method -> its keyword options (``{"integrated_gradients": {"x_steps": 50}}``).
    smooth : bool or dict
        SmoothGrad for every method (see :class:`SaliencyMap`).
    preprocess : callable, optional
        uint8 ``(H, W, 3)`` -> float32; default ``model.preprocess``.
    read_tile : callable, optional
        Row of ``tiles`` -> uint8 ``(tile_px, tile_px, 3)``; default reads it from the
        row's slide with :class:`histoatlas.WSI`.
    alpha : float
        Heatmap weight in the overlays.

    Returns
    -------
    pandas.DataFrame
        The manifest: ``name``, ``slide``, ``x``, ``y``, ``class_idx``, ``class_name``,
        ``probability``, ``method``, ``npy``, ``png``, ``overlay`` and ``constant`` (the map
        holds one value everywhere, e.g. a Grad-CAM without positive evidence for the class;
        the log says so too).

    Raises
    ------
    EmptyDatasetError
        ``tiles`` has no rows.
    ModelError
        The model's class names disagree with ``tiles`` (another model made the
        dataset), or a bare module comes without ``preprocess``.
    ConfigError
        Unknown method or option, or a tile listed twice.
    """
    import pandas as pd
    from PIL import Image

    from histoatlas.saliency.plot_utils import inferno, overlay, overview
    from histoatlas.saliency.select import tile_dir_name

    if len(tiles) == 0:
        raise EmptyDatasetError("tiles.csv lists no tiles: nothing to explain")
    methods = [_check_method(m) for m in (METHODS if methods is None else methods)]
    preprocess = preprocess or getattr(model, "preprocess", None)
    if preprocess is None:
        raise ModelError("a bare torch module needs preprocess= (uint8 tile -> float32)")
    _check_classes(tiles, list(getattr(model, "class_names", []) or []))
    if "name" not in tiles.columns:
        tiles = tiles.assign(
            name=[
                tile_dir_name(*r)
                for r in tiles[["slide", "x", "y", "class_name"]].itertuples(index=False)
            ]
        )
    repeated = sorted(set(tiles["name"][tiles["name"].duplicated()]))
    if repeated:
        raise ConfigError(f"tiles.csv lists tile(s) {repeated} more than once")
    own_reader = read_tile is None
    read_tile = _SlideTileReader() if own_reader else read_tile

    maps_dir = Path(maps_dir)
    tmp_dir = partial_path(maps_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    explainers: dict[int, SaliencyMap] = {}
    records, rows, labels = [], [], []
    try:
        for row in tiles.itertuples(index=False):
            start = time.perf_counter()
            tile = np.asarray(read_tile(row))
            if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8:
                raise ValueError(
                    f"tile {row.name}: expected uint8 RGB (H, W, 3), got {tile.shape} {tile.dtype}"
                )
            idx = int(row.class_idx)
            if idx not in explainers:
                explainers[idx] = SaliencyMap(model, idx)
            masks = explainers[idx].all(
                preprocess(tile), methods=methods, params=method_params, smooth=smooth
            )
            (tmp_dir / row.name).mkdir(parents=True)
            for method, mask in masks.items():
                files = {k: maps_dir / row.name / f"{method}{s}" for k, s in _SUFFIXES.items()}
                np.save(tmp_dir / row.name / files["npy"].name, mask)
                Image.fromarray(inferno(mask)).save(tmp_dir / row.name / files["png"].name)
                Image.fromarray(overlay(tile, mask, alpha=alpha)).save(
                    tmp_dir / row.name / files["overlay"].name
                )
                constant = bool(mask.min() == mask.max())
                if constant:
                    print(_constant_note(row, method, float(mask.flat[0])), file=sys.stderr)
                records.append(
                    {
                        **{k: getattr(row, k) for k in _MANIFEST_TILE_COLUMNS},
                        "method": method,
                        **{k: str(v) for k, v in files.items()},
                        "constant": constant,
                    }
                )
            rows.append((tile, masks))
            labels.append(_row_label(row))
            print(
                f"{row.name}: {', '.join(methods)} in {time.perf_counter() - start:.1f} s",
                file=sys.stderr,
            )
        shutil.rmtree(maps_dir, ignore_errors=True)
        os.replace(tmp_dir, maps_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if own_reader:
            read_tile.close()

    columns = [*_MANIFEST_TILE_COLUMNS, "method", *_SUFFIXES, "constant"]
    table = pd.DataFrame(records, columns=columns)
    with atomic_output(manifest) as tmp:
        table.to_csv(tmp, index=False)
    fig = overview(rows, labels=labels)
    with atomic_output(overview_png) as tmp:
        fig.savefig(tmp, dpi=100)
    return table


_SUFFIXES = {"npy": ".npy", "png": ".png", "overlay": "_overlay.png"}
_MANIFEST_TILE_COLUMNS = ("name", "slide", "x", "y", "class_idx", "class_name", "probability")


def _constant_note(row: Any, method: str, value: float) -> str:
    """The log's warning for a map that holds one value everywhere."""
    why = (
        "Grad-CAM keeps positive evidence only, and the layer holds none for this class here"
        if method == "gradcam" and value == 0
        else "the explained output does not change with the input here"
    )
    return (
        f"warning: {row.name}: the {method} map of class {row.class_name!r} is {value:g} "
        f"everywhere ({why}); maps.csv marks it constant"
    )


def _row_label(row: Any) -> str:
    label = f"{row.slide} ({int(row.x)}, {int(row.y)})\n{row.class_name}"
    prob = float(row.probability)
    return f"{label} p={prob:.2f}" if np.isfinite(prob) else label


def _check_classes(tiles, class_names: list[str]) -> None:
    """Fail when tiles.csv's class names are not the model's (another model made them)."""
    if not class_names:
        return
    for idx, name in tiles[["class_idx", "class_name"]].drop_duplicates().itertuples(index=False):
        check_class_idx(int(idx), len(class_names))
        if str(class_names[int(idx)]) != str(name):
            raise ModelError(
                f"tiles.csv explains class {name!r} as index {idx}, but the model's class "
                f"{idx} is {class_names[int(idx)]!r} (classes: {', '.join(class_names)}): "
                "the dataset was made with another model"
            )


class _SlideTileReader:
    """Row of tiles.csv -> its uint8 tile, keeping one open WSI per slide."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def __call__(self, row: Any) -> np.ndarray:
        from histoatlas import WSI

        if row.slide not in self._open:
            # WSI reads NaN (no sheet mpp) as "use the file's"
            self._open[row.slide] = WSI(
                row.path, int(row.tile_px), row.tile_um, mpp=row.mpp, name=str(row.slide)
            )
        return self._open[row.slide].read_tile(int(row.x), int(row.y))

    def close(self) -> None:
        for wsi in self._open.values():
            wsi.close()
        self._open.clear()
