"""The atlas page in a real browser (Debian's Chromium driven by Playwright).

The page under test is the demo's atlas, as `make demo` builds it: :func:`atlas_run`
returns ``results/demo`` of the session's ``demo_run`` (tests/integration/conftest.py),
or the ``results/{cohort}`` folder of a finished run named in ``HISTOATLAS_ATLAS_RUN``
(``HISTOATLAS_ATLAS_RUN=results/demo pytest tests/integration/test_atlas_browser.py``
tests the atlas of this checkout's own demo without building another). Every expectation
is read from the run's own parquet files. The test of untrusted text builds its own
small atlas (labels that are markup) and needs no run.

Each test opens the page from ``file://`` in a fresh context, as a user would (no
server, no browser flags beyond headless ones), and at the end checks that the page
logged no error or warning, asked nothing of the network and raised no dialog. Where
Chromium or Playwright is missing the tests skip, saying which (see tests/browser.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histoatlas.analysis.mosaic_grid import grid_cells, unit_square
from histoatlas.analysis.plotting import category_order
from histoatlas.atlas.encode import quantize_unit
from tests.atlas_inputs import atlas_inputs
from tests.browser import LAUNCH_ARGS, AtlasPage, chromium_path
from tests.integration.cohort import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = "<img src=x onerror=window.__xss=1>"
SCREENSHOT = ROOT / "docs" / "images" / "demo_atlas.png"


@pytest.fixture(scope="module")
def atlas_run(request) -> Path:
    """``results/{cohort}`` of the run whose atlas is tested (its atlas/ and parquet files).

    The demo's (``demo_run``: 24 x 24 cells of 224 px, a mosaic far larger than its
    viewer, so zooming in has deeper levels to load); or, when the environment names one
    in ``HISTOATLAS_ATLAS_RUN``, that finished run's ``results/{cohort}``.
    """
    if os.environ.get("HISTOATLAS_ATLAS_RUN"):
        return Path(os.environ["HISTOATLAS_ATLAS_RUN"]).resolve()
    return request.getfixturevalue("demo_run") / "results" / "demo"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def clean_page(browser, atlas_dir: Path):
    page = AtlasPage(browser, atlas_dir).open()
    yield page
    page.page.wait_for_timeout(200)  # let late tile loads and handlers report
    problems = page.errors()
    outside = [u for u in page.requests if not u.startswith(("file://", "data:", "blob:"))]
    foreign = [u for u in page.requests if u.startswith("file://") and str(atlas_dir) not in u]
    page.close()
    assert problems == [], f"the page logged: {problems}"
    assert page.blocked == [] and outside == [], f"network requests: {page.blocked + outside}"
    assert foreign == [], f"files outside the atlas folder: {foreign}"
    assert page.dialogs == [], f"dialogs: {page.dialogs}"


@pytest.fixture
def atlas(browser, atlas_run):
    for page in clean_page(browser, atlas_run / "atlas"):
        page.run = atlas_run
        yield page


def settle_mosaic(atlas: AtlasPage) -> None:
    """Wait until the mosaic viewer has stopped moving (its opening or zoom animation)."""
    atlas.wait_until(
        """() => {
            const v = HistoAtlas.mosaic.viewer.viewport;
            return v.getZoom(true) === v.getZoom(false)
                && v.getCenter(true).equals(v.getCenter(false));
        }"""
    )


def coords_of(run: Path) -> pd.DataFrame:
    """coords.parquet with the page's quantised positions ``qx``, ``qy`` (uint16)."""
    coords = pd.read_parquet(run / "umap" / "coords.parquet")
    unit = unit_square(coords[["umap_x", "umap_y"]].to_numpy(np.float64))
    q = quantize_unit(unit)
    return coords.assign(qx=q[:, 0], qy=q[:, 1], ux=unit[:, 0], uy=unit[:, 1])


def point_id(atlas: AtlasPage, slide: str, x: int, y: int) -> int:
    return atlas.eval(
        """([slide, x, y]) => {
            const {tiles, meta} = HistoAtlas.atlas.ctx;
            for (let i = 0; i < tiles.x.length; i++) {
                if (meta.slides[tiles.slide[i]] === slide && tiles.x[i] === x && tiles.y[i] === y)
                    return i;
            }
            return -1;
        }""",
        [slide, int(x), int(y)],
    )


def info(atlas: AtlasPage) -> dict[str, str]:
    return atlas.eval(
        """() => Object.fromEntries(Array.from(
            document.querySelectorAll('#info-body .info-table tr'),
            (tr) => [tr.cells[0].textContent, tr.cells[1].textContent]))"""
    )


def test_page_opens_from_disk_and_draws_every_tile(atlas, atlas_run):
    coords = pd.read_parquet(atlas_run / "umap" / "coords.parquet")
    state = atlas.eval("HistoAtlas.state")
    assert state["pointsDrawn"] == len(coords)
    assert atlas.eval("HistoAtlas.atlas.ctx.meta.n_total") == len(coords)
    assert atlas.page.title() == f"{atlas_run.name}: histoatlas atlas"
    assert f"{len(coords):,} tiles" in atlas.page.text_content("#counts")
    assert atlas.url.startswith("file://")
    # the scatter really has coloured pixels
    coloured = atlas.eval(
        """() => {
            const c = document.getElementById('scatter');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) n += d[i] !== 255 || d[i + 1] !== 255;
            return n;
        }"""
    )
    assert coloured >= min(len(coords), 100)


def test_hovering_a_point_shows_its_slide_and_coords(atlas, atlas_run):
    from sklearn.neighbors import NearestNeighbors

    coords = coords_of(atlas_run)
    q = coords[["qx", "qy"]].to_numpy(np.float64)
    distance, _ = NearestNeighbors(n_neighbors=2).fit(q).kneighbors(q)
    row = coords.iloc[int(np.argmax(distance[:, 1]))]  # the most isolated point
    point = point_id(atlas, row.slide, row.x, row.y)
    assert point >= 0
    x, y = atlas.eval("(id) => HistoAtlas.scatter.clientOf(id)", point)
    atlas.page.mouse.move(x + 30, y + 30)
    atlas.page.mouse.move(x, y, steps=5)
    atlas.wait_until("(id) => HistoAtlas.state.shown === id", arg=point)
    shown = info(atlas)
    assert shown["slide"] == row.slide
    assert shown["tile"] == str(row.tile)
    assert shown["level-0 x, y"] == f"{row.x}, {row.y}"
    # linked: its mosaic cell is outlined when the tile has one
    assert atlas.eval("HistoAtlas.mosaic.marks.linked") == atlas.eval(
        "(id) => HistoAtlas.atlas.ctx.tiles.cell[id]", point
    )


def drag_box(atlas: AtlasPage, x0: float, x1: float, y0: float, y1: float) -> None:
    """Drag a selection box over data coordinates [x0, x1] x [y0, y1], clipped to the map.

    A drag must start on the scatter canvas: a box around points near the map's edge would
    otherwise start outside it and select nothing.
    """
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, 1.0), min(y1, 1.0)
    ax, ay = atlas.eval("([x, y]) => HistoAtlas.scatter.clientOfData(x, y)", [x0, y1])
    bx, by = atlas.eval("([x, y]) => HistoAtlas.scatter.clientOfData(x, y)", [x1, y0])
    atlas.page.mouse.move(ax, ay)
    atlas.page.mouse.down()
    atlas.page.mouse.move(bx, by, steps=8)
    atlas.page.mouse.up()


def test_box_selection_lists_exactly_the_tiles_inside(atlas, atlas_run):
    coords = coords_of(atlas_run)
    rng = np.random.default_rng(0)
    for row in coords.sample(frac=1, random_state=0).itertuples():
        half = rng.uniform(0.05, 0.15)
        inside = coords[(abs(coords.ux - row.ux) <= half) & (abs(coords.uy - row.uy) <= half)]
        if 3 <= len(inside) <= min(400, 0.8 * len(coords)):
            break
    drag_box(atlas, row.ux - half, row.ux + half, row.uy - half, row.uy + half)
    atlas.wait_until("HistoAtlas.state.selectionListed !== undefined")
    box = atlas.eval("HistoAtlas.state.selection.box")
    x, y = coords.qx / 65535, coords.qy / 65535  # exactly as the page computes them
    expected = coords[(x >= box["x0"]) & (x <= box["x1"]) & (y >= box["y0"]) & (y <= box["y1"])]
    assert len(expected) >= 3
    assert atlas.eval("HistoAtlas.state.selection.count") == len(expected)
    rows = atlas.eval(
        """() => Array.from(document.querySelectorAll('#selection-list tr[data-point]'),
            (tr) => Array.from(tr.cells, (td) => td.textContent))"""
    )
    listed = {(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows}
    assert len(rows) == len(listed) == len(expected)
    assert listed == set(zip(expected.slide, expected.tile, expected.x, expected.y, strict=True))
    # the same tiles are outlined in the mosaic: the cells they fall in
    cols = atlas.eval("HistoAtlas.atlas.ctx.meta.mosaic.cols")
    i, j = grid_cells(expected[["ux", "uy"]].to_numpy(), cols)
    highlighted = atlas.eval(
        "() => Array.from(HistoAtlas.mosaic.highlighted).flatMap((v, c) => v ? [c] : [])"
    )
    assert highlighted == sorted(set((j * cols + i).tolist()))
    # and the CSV download holds exactly them
    with atlas.page.expect_download() as download:
        atlas.page.click("#download-csv")
    csv = pd.read_csv(download.value.path())
    assert download.value.suggested_filename == f"{atlas_run.name}-selection.csv"
    assert set(zip(csv.slide, csv.tile, csv.x, csv.y, strict=True)) == listed
    labels = atlas.eval("HistoAtlas.atlas.ctx.meta.labels.map((l) => l.name)")
    keys = ["slide", "tile", "x", "y", "umap_x", "umap_y"]
    assert list(csv.columns) == keys + [name for name in labels if name not in keys]


def test_zooming_the_mosaic_loads_deeper_tiles(atlas):
    top = atlas.eval("HistoAtlas.atlas.ctx.meta.mosaic.top_level")
    settle_mosaic(atlas)
    atlas.page.wait_for_timeout(300)
    before = atlas.eval("HistoAtlas.state.mosaicMaxLevel")
    assert before < top, "the mosaic fits its viewer: no deeper level to load"
    cell = atlas.eval("Array.from(HistoAtlas.atlas.ctx.mosaic.cells).findIndex((p) => p >= 0)")
    x, y = atlas.eval("(c) => HistoAtlas.mosaic.clientOfCell(c)", cell)
    atlas.page.mouse.move(x, y)
    for _ in range(12):
        atlas.page.mouse.wheel(0, -300)
        atlas.page.wait_for_timeout(100)
    atlas.wait_until("(top) => HistoAtlas.state.mosaicMaxLevel === top", arg=top)
    deeper = [u for u in atlas.requests if f"/mosaic_files/{top}/" in u]
    assert deeper and all(u.endswith(".jpeg") for u in deeper)


def test_hovering_a_mosaic_tile_shows_that_tile(atlas, atlas_run):
    mosaic = pd.read_parquet(atlas_run / "mosaic" / "mosaic.parquet")
    cols = atlas.eval("HistoAtlas.atlas.ctx.meta.mosaic.cols")
    settle_mosaic(atlas)
    for row in mosaic.sample(n=min(3, len(mosaic)), random_state=0).itertuples():
        x, y = atlas.eval(
            "(c) => HistoAtlas.mosaic.clientOfCell(c)", row.cell_j * cols + row.cell_i
        )
        atlas.page.mouse.move(x, y, steps=3)
        point = point_id(atlas, row.slide, row.x, row.y)
        atlas.wait_until("(id) => HistoAtlas.state.shown === id", arg=point)
        assert info(atlas)["level-0 x, y"] == f"{row.x}, {row.y}"
        # its full-resolution image, from the pyramid's top level
        src = atlas.eval("document.querySelector('#info-body img.tile-image').src")
        top = atlas.eval("HistoAtlas.atlas.ctx.meta.mosaic.top_level")
        assert f"/mosaic_files/{top}/{row.cell_i}_{cols - 1 - row.cell_j}.jpeg" in src
        assert atlas.eval("HistoAtlas.scatter.marks.linked") == point


def legend(atlas: AtlasPage) -> tuple[str, list[str], list[int]]:
    return atlas.eval(
        """() => {
            const texts = (selector) => Array.from(document.querySelectorAll(selector),
                                                   (e) => e.textContent);
            return [document.querySelector('#legend .legend-title').textContent,
                    texts('#legend .legend-text'),
                    texts('#legend .legend-count').map((t) => Number(t.replace(/[^0-9]/g, '')))];
        }"""
    )


def colour_by(atlas: AtlasPage, name: str) -> None:
    atlas.page.select_option("#colour-by", label=name)
    atlas.wait_until("(name) => HistoAtlas.state.label === name", arg=name)


def test_colouring_by_a_label_changes_the_legend(atlas, atlas_run):
    tiles = pd.read_parquet(atlas_run / "dataset" / "tiles.parquet")
    names = atlas.eval("HistoAtlas.atlas.ctx.meta.labels.map((l) => l.name)")
    sheet = [n for n in names if n in tiles.columns and n not in ("slide", "cluster")]
    for name in ["slide", *sheet[:1]]:
        colour_by(atlas, name)
        title, texts, counts = legend(atlas)
        values = tiles[name]
        assert title == name
        assert texts == [str(v) for v in category_order(values)]
        assert counts == [int((values == v).sum()) for v in category_order(values)]
    if "uncertainty" in names:
        colour_by(atlas, "uncertainty")
        assert legend(atlas)[0] == "uncertainty"
        assert atlas.eval("document.querySelectorAll('#legend .legend-bar').length") == 1
        assert atlas.eval("document.querySelectorAll('#legend .legend-item').length") == 0


def test_saliency_maps_open_from_their_tiles(atlas, atlas_run):
    maps = atlas.eval("HistoAtlas.atlas.ctx.meta.saliency")
    if not maps:
        pytest.skip("this run has no saliency maps")
    listed = pd.read_csv(atlas_run / "saliency" / "maps.csv")
    assert len(maps) == len(listed)
    point = maps[0]["point"]
    atlas.eval("(id) => HistoAtlas.atlas.pin(id, 'scatter')", point)
    atlas.wait_until(
        "() => Array.from(document.querySelectorAll('#info-body .saliency img'))"
        ".every((img) => img.complete && img.naturalWidth > 0)"
    )
    captions = atlas.eval(
        "() => Array.from(document.querySelectorAll('#info-body figcaption'), (e) => e.textContent)"
    )
    mine = [m for m in maps if m["point"] == point]
    assert len(captions) == len(mine)
    assert {c.split(",")[0] for c in captions} == {m["method"] for m in mine}


def test_screenshot(atlas, tmp_path):
    """The page with a box selection and a hovered mosaic tile; to docs/images/ on request."""
    coords = coords_of(atlas.run)
    # the box: around the densest tenth of the map
    ux, uy = coords.ux.to_numpy(), coords.uy.to_numpy()
    counts, xe, ye = np.histogram2d(ux, uy, bins=10, range=[[0, 1], [0, 1]])
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    drag_box(atlas, xe[i] - 0.08, xe[i + 1] + 0.08, ye[j] - 0.08, ye[j + 1] + 0.08)
    atlas.wait_until("HistoAtlas.state.selectionListed > 0")
    settle_mosaic(atlas)
    cell = atlas.eval("Array.from(HistoAtlas.mosaic.highlighted).findIndex((v) => v)")
    x, y = atlas.eval("(c) => HistoAtlas.mosaic.clientOfCell(c)", cell)
    atlas.page.mouse.move(x, y, steps=3)
    atlas.wait_until("HistoAtlas.state.shown >= 0")
    atlas.wait_until("Array.from(document.images).every((img) => img.complete)", timeout_ms=10_000)
    atlas.page.wait_for_timeout(500)
    shot = tmp_path / "atlas.png"
    atlas.page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("HISTOATLAS_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)


# -- untrusted text -----------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_atlas(tmp_path_factory) -> Path:
    """A synthetic atlas whose labels, label names and cohort name are markup."""
    from histoatlas.atlas import AtlasSettings, build_atlas

    folder = tmp_path_factory.mktemp("hostile")
    inputs = atlas_inputs(folder / "slides", subtypes=(XSS, "=HYPERLINK(1)", "-2", "plain"))
    labels = {
        "subtype": inputs.labels["subtype"],
        "<b class=injected>name</b>": inputs.labels["slide"],
    }
    settings = AtlasSettings(tile_px=32, thumbnail_px=16)
    build_atlas(
        folder / "atlas",
        points=inputs.points,
        labels=labels,
        slides=inputs.slides,
        mosaic=inputs.mosaic,
        mosaic_cols=inputs.mosaic_cols,
        cohort="<script>window.__xss=2</script>",
        settings=settings,
    )
    return folder / "atlas"


def test_labels_are_shown_as_text_never_run(browser, hostile_atlas):
    for atlas in clean_page(browser, hostile_atlas):
        assert XSS in legend(atlas)[1]
        colour_by(atlas, "<b class=injected>name</b>")
        assert legend(atlas)[0] == "<b class=injected>name</b>"
        assert atlas.page.text_content("#title") == "<script>window.__xss=2</script> atlas"
        point = atlas.eval(
            """(value) => {
                const {meta} = HistoAtlas.atlas.ctx;
                const codes = HistoAtlas.atlas.ctx.labels.get(0);
                return codes.findIndex((c) => meta.labels[0].categories[c] === value);
            }""",
            XSS,
        )
        atlas.eval("(id) => HistoAtlas.atlas.pin(id, 'scatter')", point)
        assert info(atlas)["subtype"] == XSS
        drag_box(atlas, 0, 1, 0, 1)
        atlas.wait_until("HistoAtlas.state.selectionListed > 0")
        with atlas.page.expect_download() as download:
            atlas.page.click("#download-csv")
        csv = pd.read_csv(download.value.path())
        # a formula is defused, a number is not
        assert set(csv["subtype"].astype(str)) == {XSS, "'=HYPERLINK(1)", "-2", "plain"}
        injected = atlas.eval(
            "document.querySelectorAll('img[src=\"x\"], b.injected, script:not([src])').length"
        )
        assert injected == 0
        assert atlas.eval("window.__xss === undefined")
