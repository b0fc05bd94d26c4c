"""The tile grid of a :class:`~histoatlas.io.wsi.WSI`: tissue candidates and geometry.

:class:`TileGrid` holds what the grid is made of (level-0 patch and stride, the grid's
shape) and answers where tiles are; :class:`WSI` adds opening and reading the slide.
"""

from __future__ import annotations

import numpy as np

from histoatlas.errors import SlideError
from histoatlas.io import tissue
from histoatlas.io.regions import read_downscaled
from histoatlas.io.tiling import positive_int

# A level whose downsample exceeds the one needed by less than this (relative) still
# counts as adequate: pyramids store 2.0003 or 4.002 for nominal 2 and 4.
LEVEL_TOLERANCE = 0.01


class TileGrid:
    """Grid geometry and tissue candidates; mixed into :class:`~histoatlas.io.wsi.WSI`.

    Uses the WSI's ``name``, ``dimensions``, ``grid_shape``, ``patch_size_level0``,
    ``stride_level0``, ``otsu``, ``tissue_fraction``, ``_reader`` and ``_slide``.
    """

    def _level_for(self, downsample: float) -> int:
        """Coarsest level whose downsample is at most ``downsample`` (within tolerance)."""
        ok = [
            level
            for level, ds in enumerate(self._slide.level_downsamples)
            if ds <= downsample * (1 + LEVEL_TOLERANCE)
        ]
        return max(ok, default=0)

    @property
    def tissue_mask(self) -> np.ndarray:
        """Candidate grid tiles, bool ``(n_x, n_y)``; computed on first use."""
        if self._tissue_mask is None:
            if not self.otsu:
                self._tissue_mask = np.ones(self.grid_shape, bool)
            elif 0 in self.grid_shape:
                self._tissue_mask = np.zeros(self.grid_shape, bool)
            else:
                self._tissue_mask = self._detect_tissue()
        return self._tissue_mask

    def _detect_tissue(self) -> np.ndarray:
        width, height = self.dimensions
        # Fine enough for a few mask pixels per grid step, coarse enough to stay small.
        longest = max(width, height)
        downsample = max(min(longest / 1024, self.stride_level0 / 4), longest / 4096, 1.0)
        thumb, scale = self._read_downscaled(downsample)
        fractions = tissue.grid_fractions(
            tissue.tissue_mask(thumb),
            scale,
            patch=self.patch_size_level0,
            stride=self.stride_level0,
            grid_shape=self.grid_shape,
        )
        return fractions >= self.tissue_fraction

    @property
    def candidates(self) -> np.ndarray:
        """Grid indices (i, j) of candidate tiles, int32 ``(M, 2)``, row by row."""
        # argwhere on the (n_y, n_x) transpose orders by j, then i.
        return np.ascontiguousarray(np.argwhere(self.tissue_mask.T)[:, ::-1], dtype=np.int32)

    def coords_of(self, ij: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) of the top-left corner of grid tiles.

        Parameters
        ----------
        ij : array_like, shape (M, 2) or (2,)
            Grid indices (i, j).

        Returns
        -------
        ndarray, same shape, dtype int64
            ``ij * stride_level0``.
        """
        return np.asarray(ij, dtype=np.int64) * self.stride_level0

    def tile_at(self, x: float, y: float) -> tuple[int, int]:
        """Grid index (i, j) of the tile containing level-0 point (x, y).

        With overlapping tiles (``stride_div > 1``) a point lies in several; this is
        the one that starts last, i.e. ``floor(x / stride)`` clipped to the grid.

        Raises
        ------
        SlideError
            If the point is outside the slide, or in the margin that no full tile
            covers.

        Examples
        --------
        >>> wsi.tile_at(1000, 250)  # doctest: +SKIP
        (4, 1)
        """
        width, height = self.dimensions
        if not (0 <= x < width and 0 <= y < height):
            raise SlideError(
                f"slide {self.name!r}: point (x, y) = ({x}, {y}) is outside the slide "
                f"(level-0 size {width} x {height})"
            )
        index = []
        for value, n in zip((x, y), self.grid_shape, strict=True):
            k = min(int(value // self.stride_level0), n - 1)
            if k < 0 or value >= k * self.stride_level0 + self.patch_size_level0:
                raise SlideError(
                    f"slide {self.name!r}: point (x, y) = ({x}, {y}) is outside the tile "
                    f"grid {self.grid_shape} (full tiles of {self.patch_size_level0} px "
                    "from the top-left corner)"
                )
            index.append(k)
        return index[0], index[1]

    def _read_downscaled(self, downsample: float) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole slide at about ``downsample``, and its scale (level-0 pixels per image
        pixel, x and y); read in strips of bounded memory."""
        width, height = self.dimensions
        out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
        image = read_downscaled(self._reader, self._level_for(downsample), (out_w, out_h))
        return image, (width / out_w, height / out_h)

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """The whole slide downscaled so its longer side is ``max_px`` (or less).

        Parameters
        ----------
        max_px : int
            Longer side of the result; slides smaller than that are not enlarged.

        Returns
        -------
        ndarray, shape (h, w, 3), dtype uint8
        """
        downsample = max(1.0, max(self.dimensions) / positive_int("max_px", max_px))
        return self._read_downscaled(downsample)[0]
