"""Shared fixtures: synthetic slides with known geometry, and the real test slides.

``synthetic_slide`` (a factory) writes a pyramidal JPEG TIFF that OpenSlide reads, with
a known MPP and tissue-like rectangles on a plain background, and returns a
:class:`SyntheticSlide` that knows where its tissue is::

    def test_something(synthetic_slide):
        slide = synthetic_slide()  # 2048 x 1536 px at 0.5 um/px, two tissue rectangles
        wsi = WSI(slide.path, tile_px=64, tile_um=64)
        assert slide.covers(*wsi.coords_of((2, 2)), wsi.patch_size_level0) == 1.0

``testdata`` is ``<repo>/../shared/testdata`` (real slides, see its README.md); tests
that use it are skipped when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from histoatlas.io.tiff import write_pyramid_tiff

TESTDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata"

# Two tissue rectangles, level-0 (x0, y0, x1, y1) half-open, on multiples of 128 px so
# they align with a 128 px grid (tile_um=64 at 0.5 um/px).
DEFAULT_TISSUE = ((256, 256, 1024, 768), (1280, 896, 1792, 1408))
# H&E-like colours: eosin pink mixed with haematoxylin purple.
PINK = np.array([235, 150, 200], np.float32)
PURPLE = np.array([110, 50, 150], np.float32)


@dataclass(frozen=True)
class SyntheticSlide:
    """A slide written by :func:`make_synthetic_slide`.

    Attributes
    ----------
    path : Path
        The ``.tiff`` file.
    image : ndarray, shape (H, W, 3), dtype uint8
        Level-0 pixels as written (before JPEG compression).
    mpp : float or None
        Microns per pixel in the file's resolution tags.
    tissue : tuple of (x0, y0, x1, y1)
        Tissue rectangles in level-0 pixels, half-open.
    """

    path: Path
    image: np.ndarray
    mpp: float | None
    tissue: tuple[tuple[int, int, int, int], ...]

    @property
    def size(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def tissue_mask(self) -> np.ndarray:
        """Bool (H, W): True inside a tissue rectangle."""
        mask = np.zeros(self.image.shape[:2], bool)
        for x0, y0, x1, y1 in self.tissue:
            mask[y0:y1, x0:x1] = True
        return mask

    def covers(self, x: int, y: int, size: int) -> float:
        """Fraction of the square ``[x, x + size) x [y, y + size)`` that is tissue."""
        return float(self.tissue_mask[y : y + size, x : x + size].mean())


def tissue_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Saturated H&E-like texture, (height, width, 3) uint8, in 8 px blocks (JPEG-friendly)."""
    cells = rng.uniform(0.0, 0.7, ((height + 7) // 8, (width + 7) // 8, 1)).astype(np.float32)
    mix = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:height, :width]
    return np.round(PINK * (1 - mix) + PURPLE * mix).astype(np.uint8)


def make_synthetic_slide(
    path: str | Path,
    *,
    size: tuple[int, int] = (2048, 1536),
    mpp: float | None = 0.5,
    tissue: Sequence[tuple[int, int, int, int]] = DEFAULT_TISSUE,
    background: tuple[int, int, int] = (255, 255, 255),
    texture: Callable[[int, int, np.random.Generator], np.ndarray] = tissue_texture,
    n_levels: int = 3,
    tile: int = 256,
    seed: int = 0,
) -> SyntheticSlide:
    """Write a pyramidal TIFF slide with tissue rectangles on a plain background.

    Parameters
    ----------
    path : str or Path
        Output ``.tiff``.
    size : (int, int)
        Level-0 (width, height).
    mpp : float or None
        Written to the resolution tags; ``None`` writes a slide without MPP.
    tissue : sequence of (x0, y0, x1, y1)
        Rectangles (level-0, half-open) filled with ``texture``.
    background : (int, int, int)
        RGB of everything else (white glass by default; black for dark-field).
    texture : callable
        ``texture(height, width, rng) -> (height, width, 3) uint8``.
    n_levels, tile : int
        Pyramid levels and TIFF tile edge, as :func:`histoatlas.io.tiff.write_pyramid_tiff`.
    seed : int
        Seeds the texture.

    Returns
    -------
    SyntheticSlide
    """
    rng = np.random.default_rng(seed)
    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    for x0, y0, x1, y1 in tissue:
        image[y0:y1, x0:x1] = texture(y1 - y0, x1 - x0, rng)
    write_pyramid_tiff(path, image, mpp, n_levels=n_levels, tile=tile)
    return SyntheticSlide(Path(path), image, mpp, tuple(tuple(r) for r in tissue))


@pytest.fixture
def synthetic_slide(tmp_path_factory) -> Callable[..., SyntheticSlide]:
    """Factory: ``synthetic_slide(name="slide", **kwargs)`` writes a slide in a temp dir.

    Keyword arguments are those of :func:`make_synthetic_slide`; ``name`` is the file
    stem (and so the slide's default name in histoatlas).
    """
    folder = tmp_path_factory.mktemp("slides")

    def make(name: str = "slide", **kwargs) -> SyntheticSlide:
        return make_synthetic_slide(folder / f"{name}.tiff", **kwargs)

    return make


@pytest.fixture(scope="session")
def testdata() -> Path:
    """``<repo>/../shared/testdata``, the real test slides; skips when absent."""
    if not TESTDATA.is_dir():
        pytest.skip(f"real test data not found at {TESTDATA.resolve()} (shared/testdata)")
    return TESTDATA.resolve()


@pytest.fixture(scope="session", autouse=True)
def local_runs_skip_slurm():
    """``SLURM_CONF=/dev/null`` for the session: the local Snakemake runs of the tests never
    need SLURM, and where a slurm.conf names a controller that is down (as the cluster test
    leaves it when killed before it restores the file), importing the SLURM executor plugin
    waits ~9 s in every call. The cluster test lifts it for its own runs."""
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = "/dev/null"
    yield
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before
