/* histoatlas atlas: wires the scatter, the mosaic and the panels together.
 *
 * First paint needs meta, points, mosaic and the first label (named in index.html);
 * tile details (data/tiles.js) and the other labels load right after, in the background.
 * window.HistoAtlas.state tells tests (and the curious) what the page has done.
 */
(function () {
  "use strict";

  const HA = window.HistoAtlas;
  const $ = (id) => document.getElementById(id);

  function groupSaliency(entries) {
    const byPoint = new Map();
    for (const entry of entries) {
      if (entry.point >= 0) {
        byPoint.set(entry.point, (byPoint.get(entry.point) || []).concat([entry]));
      }
    }
    return byPoint;
  }

  function header(meta) {
    const cohort = meta.cohort || "cohort";
    document.title = `${cohort}: histoatlas atlas`;
    $("title").textContent = `${cohort} atlas`;
    const total = meta.n_total.toLocaleString();
    $("counts").textContent =
      meta.n_drawn === meta.n_total
        ? `${total} tiles`
        : `${meta.n_drawn.toLocaleString()} of ${total} tiles drawn (seeded sample)`;
    const select = $("colour-by");
    meta.labels.forEach((label, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = label.name;
      select.append(option);
    });
  }

  class Atlas {
    constructor(meta, points) {
      this.ctx = {
        meta,
        xy: points.xy,
        labels: new Map(),
        tiles: null,
        mosaic: HA.get("mosaic"),
        saliency: groupSaliency(meta.saliency),
        current: 0,
      };
      this.hovered = -1;
      this.pinned = -1;
      this.selection = null;
      header(meta);
      this.scatter = new HA.Scatter($("scatter"), $("scatter-overlay"));
      this.scatter.setData(points.xy);
      this.scatter.fit();
    }

    loadLabel(k) {
      const label = this.ctx.meta.labels[k];
      return HA.load(`label-${k}`, label.file).then((payload) => {
        this.ctx.labels.set(k, payload.codes);
        return payload.codes;
      });
    }

    applyLabel(k, codes) {
      const label = this.ctx.meta.labels[k];
      this.ctx.labels.set(k, codes);
      this.ctx.current = k;
      this.scatter.setColours(codes, label.palette);
      HA.renderLegend($("legend"), label, codes);
      HA.state.label = label.name;
    }

    colourBy(k) {
      return this.loadLabel(k).then((codes) => {
        this.applyLabel(k, codes);
        this.showSelection();
      });
    }

    firstPaint() {
      this.applyLabel(0, HA.get("label-0").codes);
      this.scatter.render();
      requestAnimationFrame(() => requestAnimationFrame(() => (HA.state.firstPaintMs = performance.now())));
    }

    startMosaic() {
      const on = {
        hover: (id) => this.hover(id, "mosaic"),
        click: (id) => this.pin(id, "mosaic"),
      };
      this.mosaic = new HA.MosaicView($("mosaic"), $("mosaic-overlay"), this.ctx.meta.mosaic, this.ctx.mosaic.cells, on);
    }

    loadRest() {
      const { meta } = this.ctx;
      return HA.load("tiles", "data/tiles.js")
        .then((tiles) => {
          this.ctx.tiles = tiles;
          HA.state.tilesReady = true;
          HA.state.tilesReadyMs = performance.now();
          this.showInfo();
          this.showSelection();
          return meta.labels.reduce((chain, _, k) => chain.then(() => this.loadLabel(k)), Promise.resolve());
        })
        .then(() => {
          HA.state.labelsReady = true;
          HA.state.labelsReadyMs = performance.now();
          this.showInfo();
        })
        .catch((error) => HA.fail(error.message));
    }

    cellOf(id) {
      return id >= 0 && this.ctx.tiles ? this.ctx.tiles.cell[id] : -1;
    }

    hover(id, source) {
      this.hovered = id;
      if (source === "scatter") {
        this.mosaic.marks.linked = this.cellOf(id);
        this.mosaic.drawOverlay();
      } else {
        this.scatter.marks.linked = id;
        this.scatter.drawOverlay();
      }
      this.showInfo();
    }

    pin(id, source) {
      this.pinned = id;
      this.scatter.marks.pinned = id;
      this.scatter.drawOverlay();
      this.mosaic.marks.pinned = this.cellOf(id);
      if (source === "scatter" && this.mosaic.marks.pinned >= 0) {
        this.mosaic.panToCell(this.mosaic.marks.pinned);
      }
      this.mosaic.drawOverlay();
      HA.state.pinned = id;
      this.showInfo();
    }

    showInfo() {
      const id = this.hovered >= 0 ? this.hovered : this.pinned;
      HA.state.shown = id;
      HA.renderInfo($("info-body"), id, this.ctx);
    }

    select(box) {
      const ids = this.scatter.inBox(box.x0, box.x1, box.y0, box.y1);
      const mask = new Uint8Array(this.scatter.n);
      ids.forEach((id) => (mask[id] = 1));
      this.selection = { box, ids };
      this.scatter.setSelection(mask);
      HA.state.selection = { box, count: ids.length };
      this.showSelection();
    }

    clearSelection() {
      this.selection = null;
      this.scatter.setSelection(null);
      this.mosaic.setHighlight(null);
      HA.state.selection = null;
      this.showSelection();
    }

    showSelection() {
      const summary = $("selection-summary");
      const button = $("download-csv");
      const { tiles, meta, current } = this.ctx;
      if (!this.selection) {
        summary.textContent = "Drag a box on the map to select tiles.";
        button.disabled = true;
        HA.renderSelection($("selection-list"), null);
        return;
      }
      const { ids } = this.selection;
      summary.textContent = `${ids.length.toLocaleString()} tiles selected.`;
      if (!tiles) {
        return;
      }
      const cells = new Uint8Array(meta.mosaic.cols * meta.mosaic.rows);
      ids.forEach((id) => (cells[tiles.cell[id]] = 1));
      this.mosaic.setHighlight(cells);
      const view = { meta, tiles, label: meta.labels[current], codes: this.ctx.labels.get(current) };
      HA.renderSelection($("selection-list"), ids, view, (id) => this.pin(id, "scatter"));
      button.disabled = ids.length === 0;
      HA.state.selectionListed = ids.length;
    }

    downloadSelection() {
      const { meta } = this.ctx;
      const ids = this.selection.ids;
      const all = meta.labels.map((_, k) => this.loadLabel(k));
      return Promise.all([HA.load("tiles", "data/tiles.js"), ...all]).then(() => {
        const name = `${(meta.cohort || "atlas").replace(/[^A-Za-z0-9._-]/g, "_")}-selection.csv`;
        HA.download(HA.selectionCsv(ids, this.ctx), name);
      });
    }
  }

  function bindControls(atlas) {
    const input = HA.bindScatter(atlas.scatter, {
      hover: (id) => atlas.hover(id, "scatter"),
      click: (id) => atlas.pin(id, "scatter"),
      select: (box) => atlas.select(box),
    });
    const modes = { select: $("mode-select"), pan: $("mode-pan") };
    for (const [name, button] of Object.entries(modes)) {
      button.addEventListener("click", () => {
        input.setMode(name);
        for (const [other, b] of Object.entries(modes)) {
          b.setAttribute("aria-pressed", String(other === name));
        }
      });
    }
    $("colour-by").addEventListener("change", (event) => {
      atlas.colourBy(Number(event.target.value)).catch((error) => HA.fail(error.message));
    });
    $("reset-view").addEventListener("click", () => atlas.scatter.fit());
    $("clear-selection").addEventListener("click", () => atlas.clearSelection());
    $("download-csv").addEventListener("click", () => {
      atlas.downloadSelection().catch((error) => HA.fail(error.message));
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        atlas.clearSelection();
        atlas.pin(-1, "keyboard");
      }
    });
    window.addEventListener("resize", () => atlas.scatter.resize());
  }

  function start() {
    const meta = HA.get("meta");
    const points = HA.get("points");
    if (!meta || !points || !HA.get("label-0") || !HA.get("mosaic")) {
      HA.fail(
        "The atlas data did not load (data/meta.js, points.js, mosaic.js, label-0.js): " +
          "open index.html inside its atlas folder, with data/ beside it."
      );
      return;
    }
    const atlas = new Atlas(meta, points);
    HA.atlas = atlas;
    HA.scatter = atlas.scatter;
    atlas.firstPaint();
    bindControls(atlas);
    atlas.startMosaic();
    HA.mosaic = atlas.mosaic;
    atlas.showInfo();
    atlas.showSelection();
    setTimeout(() => atlas.loadRest(), 0);
  }

  try {
    start();
  } catch (error) {
    HA.fail(`The atlas failed to start: ${error.message}`);
  }
})();
