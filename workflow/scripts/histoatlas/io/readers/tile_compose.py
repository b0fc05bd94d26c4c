"""OpenSlide's compositing of a region from its source tiles, reproduced bit for bit.

``OpenSlide.read_region((x0, y0), level, size)`` takes level-0 coordinates and paints at
``x0 / downsample``, which is fractional whenever the downsample is not an integer (2.000337,
4.0002: most pyramids) or ``x0`` is not a multiple of it. What happens then, read in
OpenSlide 4.0.1 (``openslide-grid.c``), cairo 1.18.4 and pixman 0.46.4 (the versions in
openslide-bin 4.0.1.2) and checked pixel by pixel against it:

1. Each source tile is one ``cairo_paint`` with ``CAIRO_OPERATOR_SATURATE``, translated by
   ``(k - start) * tile - offset``, tiles painted from the last row and column back.
2. cairo rounds the translation to 1/256 px: when both axes round to whole pixels, the tile
   is copied pixel for pixel, shifted by ``ceil(t - 0.5)``.
3. Otherwise pixman samples bilinearly at 1/65536 px. SATURATE needs a division, so pixman
   takes its float ("wide") path: 8 bits to float32 (``u * (1/255f)``), bilinear weights
   and sums in float32, SATURATE in float32, back to 8 bits by truncation
   (``floor(f * 256)``, 256 kept as 255). Not a fixed-point bilinear: 7-bit weights miss by
   up to 3 grey levels.
4. Where the 2 x 2 taps straddle two tiles (seams) or reach cleared pixels past the level's
   edge, the pixel is the SATURATE sum of separately rounded partial paints, with alpha
   below 255; openslide-python un-premultiplies (``255 * c // a``, wrapped to 8 bits) and
   histoatlas composites it onto the background colour (PIL ``alpha_composite``).

:func:`plan_region` computes the geometry, :func:`compose` the pixels from decoded tiles.
Regions this cannot reproduce (negative coordinates, a side over 4096 px, tiles whose
rounding disagrees) get no plan: the caller reads them with OpenSlide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32 = np.float32
INV255 = F32(1.0) / F32(255.0)
FLT_MIN = np.finfo(np.float32).tiny
# u8 -> float32 as pixman expands it
U8_TO_F32 = np.arange(256, dtype=F32) * INV255
# openslide_read_region splits larger regions into 4096 px squares, each rounded anew.
MAX_REGION_SIDE = 4096


@dataclass(frozen=True)
class LevelGeometry:
    """A pyramid level as OpenSlide's grid sees it.

    ``width``/``height`` are OpenSlide's level size (pixels past it are cleared), the
    tile counts come from the TIFF page (which may be larger, as in Philips TIFF).
    """

    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    tiles_down: int
    downsample: float

    @property
    def tile_bytes(self) -> int:
        """Bytes of one decoded RGB source tile."""
        return self.tile_w * self.tile_h * 3


@dataclass(frozen=True)
class Axis:
    """One axis of a region: tiles ``start <= k < end`` are painted; output pixel ``i``
    samples level coordinate ``base + i`` (+ ``frac16 / 65536`` when not exact)."""

    start: int
    end: int
    base: int
    frac16: int


@dataclass(frozen=True)
class Plan:
    """How OpenSlide paints one region (see :func:`plan_region`)."""

    x: Axis
    y: Axis
    exact: bool
    width: int
    height: int

    @property
    def painted(self) -> bool:
        """Whether any tile is painted at all (else the region is all background)."""
        return self.x.end > self.x.start and self.y.end > self.y.start


def _axis(pos0: int, downsample: float, size: int, tile: int, n_tiles: int):
    """Start and end tile and the pattern translation of each painted tile (C's doubles)."""
    pos = float(pos0) / downsample
    start = int(pos / tile)
    end_raw = math.ceil((pos + size) / tile)
    offset = pos - start * float(tile)
    end = min(end_raw, n_tiles)
    if end_raw <= 0 or start > n_tiles - 1:
        end = start  # completely outside the grid: nothing painted
    shifts = [-((k - start) * float(tile) - offset) for k in range(start, max(start, end))]
    return start, end, shifts


def _fixed8_is_integer(value: float) -> bool:
    """cairo's test for a pixel-exact translation (24.8 fixed point, round half even)."""
    return int(np.rint(value * 256.0)) % 256 == 0


def plan_region(geom: LevelGeometry, x0: int, y0: int, width: int, height: int) -> Plan | None:
    """The geometry OpenSlide uses for ``read_region((x0, y0), level, (width, height))``.

    Parameters
    ----------
    geom : LevelGeometry
    x0, y0 : int
        Level-0 coordinates of the region's top-left corner.
    width, height : int
        Region size in level pixels.

    Returns
    -------
    Plan or None
        ``None`` when the region cannot be reproduced here (negative coordinates, a side
        over ``MAX_REGION_SIDE``, or painted tiles whose rounding disagrees).
    """
    if x0 < 0 or y0 < 0 or not (0 < width <= MAX_REGION_SIDE and 0 < height <= MAX_REGION_SIDE):
        return None
    ds = geom.downsample
    sx, ex, shx = _axis(x0, ds, width, geom.tile_w, geom.tiles_across)
    sy, ey, shy = _axis(y0, ds, height, geom.tile_h, geom.tiles_down)
    if not shx or not shy:
        return Plan(Axis(sx, sx, 0, 0), Axis(sy, sy, 0, 0), True, width, height)
    exact_x = [_fixed8_is_integer(s) for s in shx]
    exact_y = [_fixed8_is_integer(s) for s in shy]
    if all(exact_x) and all(exact_y):
        bases_x = [math.ceil(s - 0.5) + k * geom.tile_w for k, s in enumerate(shx)]
        bases_y = [math.ceil(s - 0.5) + k * geom.tile_h for k, s in enumerate(shy)]
        fx = fy = [0]
        exact = True
    elif not any(ex and ey for ex in exact_x for ey in exact_y):
        fixed_x = [int(np.rint(s * 65536.0)) + k * geom.tile_w * 65536 for k, s in enumerate(shx)]
        fixed_y = [int(np.rint(s * 65536.0)) + k * geom.tile_h * 65536 for k, s in enumerate(shy)]
        bases_x, fx = [f >> 16 for f in fixed_x], [f & 0xFFFF for f in fixed_x]
        bases_y, fy = [f >> 16 for f in fixed_y], [f & 0xFFFF for f in fixed_y]
        exact = False
    else:
        return None  # some tiles pixel-exact, others filtered: not worth reproducing
    if len(set(bases_x)) > 1 or len(set(bases_y)) > 1 or len(set(fx)) > 1 or len(set(fy)) > 1:
        return None
    axis_x = Axis(sx, ex, sx * geom.tile_w + bases_x[0], fx[0])
    axis_y = Axis(sy, ey, sy * geom.tile_h + bases_y[0], fy[0])
    return Plan(axis_x, axis_y, exact, width, height)


TileGetter = Callable[[int, int], np.ndarray]


def compose(
    plan: Plan,
    geom: LevelGeometry,
    get_tile: TileGetter,
    background: tuple[int, int, int],
) -> np.ndarray:
    """The RGB pixels OpenSlide (+ histoatlas's compositing) gives for a planned region.

    Parameters
    ----------
    plan : Plan
    geom : LevelGeometry
    get_tile : callable
        ``get_tile(tx, ty)`` returns the decoded source tile, ``(tile_h, tile_w, 3)``
        uint8; called only for tiles the region needs.
    background : (int, int, int)
        What transparent pixels are composited onto.

    Returns
    -------
    ndarray, shape (plan.height, plan.width, 3), dtype uint8
    """
    out = np.empty((plan.height, plan.width, 3), np.uint8)
    if not plan.painted:
        return _fill(out, background)
    if plan.exact:
        r0, r1 = _inside(plan.y.base, plan.height, geom.height)
        c0, c1 = _inside(plan.x.base, plan.width, geom.width)
        if (r0, r1, c0, c1) != (0, plan.height, 0, plan.width):  # not all level pixels
            _fill(out, background)
        _blit(out, plan.y.base, plan.x.base, geom, plan, get_tile)
        return out
    return _compose_filtered(_fill(out, background), plan, geom, get_tile, background)


def _fill(out: np.ndarray, colour) -> np.ndarray:
    """Fill (H, W, 3) with an RGB colour (a 3-vector broadcast is 100 x slower)."""
    if colour[0] == colour[1] == colour[2]:
        out.fill(colour[0])
    else:
        out.reshape(out.shape[0], -1)[:] = np.tile(np.asarray(colour, np.uint8), out.shape[1])
    return out


def _inside(base: int, n: int, limit: int) -> tuple[int, int]:
    """Output indices ``[lo, hi)`` whose level coordinate ``base + i`` is in ``[0, limit)``."""
    return max(0, -base), max(0, min(n, limit - base))


def _blit(dst: np.ndarray, base_y: int, base_x: int, geom: LevelGeometry, plan: Plan, get_tile):
    """Copy level pixels ``[base_y, base_y + H) x [base_x, base_x + W)`` inside the clip."""
    h, w = dst.shape[:2]
    th, tw = geom.tile_h, geom.tile_w
    r0, r1 = _inside(base_y, h, geom.height)
    c0, c1 = _inside(base_x, w, geom.width)
    if r0 >= r1 or c0 >= c1:
        return
    for ty in range(
        max(plan.y.start, (base_y + r0) // th), min(plan.y.end, (base_y + r1 - 1) // th + 1)
    ):
        for tx in range(
            max(plan.x.start, (base_x + c0) // tw), min(plan.x.end, (base_x + c1 - 1) // tw + 1)
        ):
            tile = get_tile(tx, ty)
            lr0, lr1 = max(base_y + r0, ty * th), min(base_y + r1, (ty + 1) * th)
            lc0, lc1 = max(base_x + c0, tx * tw), min(base_x + c1, (tx + 1) * tw)
            dst[lr0 - base_y : lr1 - base_y, lc0 - base_x : lc1 - base_x] = tile[
                lr0 - ty * th : lr1 - ty * th, lc0 - tx * tw : lc1 - tx * tw
            ]


def _weights(plan: Plan) -> tuple[F32, F32, F32, F32]:
    """pixman's float bilinear weights (tl, tr, bl, br), computed as it does."""
    dx = F32(plan.x.frac16) / F32(65536.0)
    dy = F32(plan.y.frac16) / F32(65536.0)
    one = F32(1.0)
    return (one - dx) * (one - dy), dx * (one - dy), (one - dx) * dy, dx * dy


def _classify(base: int, n: int, tile: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: (special, outside). Special: its two taps straddle a tile edge or
    the level's edge; outside: both taps past the level's edge."""
    c = base + np.arange(n)
    outside = c >= limit
    special = ~outside & ((c + 1 >= limit) | (c % tile == tile - 1))
    return special, outside


def _compose_filtered(out, plan: Plan, geom: LevelGeometry, get_tile, background) -> np.ndarray:
    h, w = plan.height, plan.width
    spec_c, out_c = _classify(plan.x.base, w, geom.tile_w, geom.width)
    spec_r, out_r = _classify(plan.y.base, h, geom.tile_h, geom.height)
    rows = np.flatnonzero(~out_r)
    cols = np.flatnonzero(~out_c)
    if len(rows) == 0 or len(cols) == 0:
        return out
    plain_r, plain_c = ~(spec_r | out_r), ~(spec_c | out_c)
    if plain_r.any() and plain_c.any():
        mosaic = np.zeros((h + 1, w + 1, 3), np.uint8)
        _blit(mosaic, plan.y.base, plan.x.base, geom, plan, get_tile)
        interior = _bilinear_interior(mosaic, _weights(plan))
        r_lo, r_hi = rows[0], rows[-1] + 1
        c_lo, c_hi = cols[0], cols[-1] + 1
        out[r_lo:r_hi, c_lo:c_hi] = interior[r_lo:r_hi, c_lo:c_hi]
    # seams and edges, painted tile by tile as OpenSlide does
    special_cols = np.flatnonzero(spec_c)
    special_rows = np.flatnonzero(spec_r)
    if len(special_cols):
        out[np.ix_(rows, special_cols)] = _paint_exact(
            plan, geom, get_tile, rows, special_cols, background
        )
    if len(special_rows):
        out[np.ix_(special_rows, cols)] = _paint_exact(
            plan, geom, get_tile, special_rows, cols, background
        )
    return out


def _bilinear_interior(mosaic: np.ndarray, weights) -> np.ndarray:
    """pixman's float bilinear + SATURATE onto transparent + 8-bit store, for opaque taps."""
    w_tl, w_tr, w_bl, w_br = weights
    # alpha of the sum of four opaque taps, and SATURATE's factor (1 - 0) / alpha
    alpha = ((w_tl + w_tr) + w_bl) + w_br
    fa = F32(1.0) if -FLT_MIN < alpha < FLT_MIN else min(F32(1.0), F32(1.0) / alpha)
    f = mosaic.astype(F32)
    f *= INV255  # = U8_TO_F32[mosaic], faster
    s = np.multiply(f[:-1, :-1], w_tl)
    t = np.empty_like(s)
    for tap, weight in ((f[:-1, 1:], w_tr), (f[1:, :-1], w_bl), (f[1:, 1:], w_br)):
        np.multiply(tap, weight, out=t)
        s += t  # ((tl + tr) + bl) + br, each rounded, as C evaluates it
    if fa != 1.0:
        s *= fa
    return _to_u8(s)


def _to_u8(values: np.ndarray) -> np.ndarray:
    """pixman's store: ``min(f, 1) * 256`` truncated, 256 kept as 255 (``values`` >= 0).

    ``floor(min(f, 1) * 256)`` then 256 -> 255 equals ``floor(min(f * 256, 255))``:
    scaling by 256 is exact in float32.
    """
    scaled = values * F32(256.0)
    np.minimum(scaled, F32(255.0), out=scaled)
    return scaled.astype(np.uint8)


def _paint_exact(plan: Plan, geom, get_tile, rows: np.ndarray, cols: np.ndarray, background):
    """Pixels (rows x cols) painted tile by tile: float SATURATE, 8 bits between paints."""
    th, tw = geom.tile_h, geom.tile_w
    lr = plan.y.base + rows
    lc = plan.x.base + cols
    lr2, lc2 = np.stack([lr, lr + 1]), np.stack([lc, lc + 1])  # top/bottom, left/right taps
    # the tile each tap lies in; -1 past the level's edge (cleared to transparent)
    row_tile = np.where(lr2 < geom.height, lr2 // th, -1)
    col_tile = np.where(lc2 < geom.width, lc2 // tw, -1)
    taps = tuple(zip(((0, 0), (0, 1), (1, 0), (1, 1)), _weights(plan), strict=True))
    dest = np.zeros((len(rows), len(cols), 4), np.uint8)
    for ty in range(plan.y.end - 1, plan.y.start - 1, -1):
        in_r = row_tile == ty
        if not in_r.any():
            continue
        for tx in range(plan.x.end - 1, plan.x.start - 1, -1):
            in_c = col_tile == tx
            if not in_c.any():
                continue
            tile = get_tile(tx, ty)
            rr = np.clip(lr2 - ty * th, 0, th - 1)
            cc = np.clip(lc2 - tx * tw, 0, tw - 1)
            px = U8_TO_F32[tile[rr[:, :, None, None], cc[None, None, :, :]]]  # (2, R, 2, C, 3)
            src = np.zeros(dest.shape, F32)
            for (dr, dc), weight in taps:  # tl, tr, bl, br: C's order of the sums
                ok = in_r[dr][:, None] & in_c[dc][None, :]
                src[..., :3] += np.where(ok[..., None], px[dr, :, dc] * weight, F32(0.0))
                src[..., 3] += np.where(ok, weight, F32(0.0))  # opaque tap: alpha 1
            dest = _saturate(dest, src)
    return _unpremultiply_onto(dest, background)


def _saturate(dest8: np.ndarray, src: np.ndarray) -> np.ndarray:
    """pixman's float SATURATE of ``src`` onto 8-bit ``dest8`` (RGBA, premultiplied)."""
    d = U8_TO_F32[dest8]
    sa, da = src[..., 3], d[..., 3]
    tiny = (sa > -FLT_MIN) & (sa < FLT_MIN)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (F32(1.0) - da) / np.where(tiny, F32(1.0), sa)
    fa = np.where(tiny, F32(1.0), np.minimum(np.maximum(q, F32(0.0)), F32(1.0)))
    total = src * fa[..., None]
    total += d
    return _to_u8(total)


def _unpremultiply_onto(rgba: np.ndarray, background) -> np.ndarray:
    """openslide-python's un-premultiplication, then PIL compositing onto the background."""
    from PIL import Image

    alpha = rgba[..., 3].astype(np.uint32)
    rgb = rgba[..., :3].astype(np.uint32)
    part = (alpha > 0) & (alpha < 255)
    rgb[part] = ((255 * rgb[part]) // alpha[part][:, None]) & 0xFF
    result = rgb.astype(np.uint8)
    if (alpha < 255).any():
        straight = np.dstack([result, rgba[..., 3]])
        canvas = Image.new("RGBA", straight.shape[1::-1], (*background, 255))
        composited = Image.alpha_composite(canvas, Image.fromarray(straight, "RGBA"))
        result = np.asarray(composited.convert("RGB"))
    return result
