/* histoatlas atlas: legend, tile details and the selection list.
 *
 * Labels, slide ids, class names and file names are untrusted text: they only ever reach
 * the page through textContent (never innerHTML), and paths only from the atlas's own
 * meta, checked against the patterns the Python side writes.
 */
(function () {
  "use strict";

  const HA = window.HistoAtlas;
  const MAX_LEGEND = 200;
  const MAX_ROWS = 500;
  const THUMB_PX = 128; // thumbnails are shown at about this size
  const SHEET = /^[0-9]+\.jpeg$/;
  const SALIENCY = /^saliency\/[0-9]+(_overlay)?\.png$/;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = String(text);
    }
    return node;
  }
  HA.el = el;

  /** Text of label `label` (its meta) for code `code`. */
  function labelText(label, code) {
    if (label.kind === "categorical") {
      return label.categories[code];
    }
    if (code === label.missing) {
      return "(missing)";
    }
    const value = label.vmin + (code / (label.missing - 1)) * (label.vmax - label.vmin);
    return Number(value.toPrecision(3)).toString();
  }
  HA.labelText = labelText;

  HA.renderLegend = function (root, label, codes) {
    root.replaceChildren(el("h3", "legend-title", label.name));
    if (label.kind === "continuous") {
      const bar = el("div", "legend-bar");
      const stops = label.palette.slice(0, label.missing).filter((_, k) => k % 16 === 0 || k === label.missing - 1);
      bar.style.background = `linear-gradient(to right, ${stops.map(HA.cssColour).join(", ")})`;
      const ends = el("div", "legend-ends");
      ends.append(el("span", "", labelText(label, 0)), el("span", "", labelText(label, label.missing - 1)));
      root.append(bar, ends);
      let missing = 0;
      for (let i = 0; i < codes.length; i++) {
        missing += codes[i] === label.missing;
      }
      if (missing) {
        root.append(el("div", "legend-note", `(missing): ${missing.toLocaleString()}`));
      }
      return;
    }
    const list = el("ul", "legend-items");
    label.categories.slice(0, MAX_LEGEND).forEach((category, k) => {
      const item = el("li", "legend-item");
      const swatch = el("span", "swatch");
      swatch.style.backgroundColor = HA.cssColour(label.palette[k]);
      item.append(swatch, el("span", "legend-text", category), el("span", "legend-count", label.counts[k].toLocaleString()));
      list.append(item);
    });
    root.append(list);
    if (label.categories.length > MAX_LEGEND) {
      root.append(el("div", "legend-note", `and ${label.categories.length - MAX_LEGEND} more values`));
    }
  };

  function addRow(table, name, value) {
    const row = el("tr");
    row.append(el("th", "", name), el("td", "", value));
    table.append(row);
  }

  function tileImage(id, ctx) {
    const { meta, tiles, mosaic } = ctx;
    const cell = tiles.cell[id];
    const cols = meta.mosaic.cols;
    if (mosaic.cells[cell] === id) {
      const img = el("img", "tile-image");
      const row = meta.mosaic.rows - 1 - Math.floor(cell / cols);
      img.src = `mosaic_files/${meta.mosaic.top_level}/${cell % cols}_${row}.jpeg`;
      img.alt = "tile image (mosaic tile at full resolution)";
      return img;
    }
    const thumbs = meta.thumbs;
    const slot = tiles.thumb[id];
    if (thumbs && slot < thumbs.points) {
      const per = thumbs.cols * thumbs.cols;
      const sheet = thumbs.sheets[Math.floor(slot / per)];
      if (SHEET.test(sheet)) {
        const k = slot % per;
        const px = thumbs.px * Math.max(1, Math.round(THUMB_PX / thumbs.px)); // shown size
        const div = el("div", "tile-thumb");
        div.setAttribute("role", "img");
        div.setAttribute("aria-label", "tile thumbnail");
        div.style.width = div.style.height = `${px}px`;
        div.style.backgroundImage = `url("thumbs/${sheet}")`;
        div.style.backgroundSize = `${thumbs.cols * px}px auto`;
        div.style.backgroundPosition = `-${(k % thumbs.cols) * px}px -${Math.floor(k / thumbs.cols) * px}px`;
        return div;
      }
    }
    return el("p", "hint", "No image of this tile in the atlas (atlas.max_thumbnails).");
  }

  function saliencyFigures(entries) {
    const box = el("div", "saliency");
    box.append(el("h3", "", "Saliency maps"));
    for (const entry of entries) {
      if (!SALIENCY.test(entry.overlay) || !SALIENCY.test(entry.png)) {
        continue;
      }
      const figure = el("figure", "saliency-map");
      const link = el("a");
      link.href = entry.png;
      link.target = "_blank";
      link.rel = "noopener";
      const img = el("img");
      img.src = entry.overlay;
      img.alt = `${entry.method} saliency overlay`;
      link.append(img);
      const p = Number(entry.probability).toFixed(2);
      figure.append(link, el("figcaption", "", `${entry.method}, class ${entry.class_name} (p = ${p})`));
      box.append(figure);
    }
    return box;
  }

  /** Fill `root` with the details of point `id`; ctx: meta, labels, tiles, mosaic, saliency. */
  HA.renderInfo = function (root, id, ctx) {
    root.replaceChildren();
    if (id < 0) {
      root.append(el("p", "hint", "Hover or click a point of the map or a tile of the mosaic."));
      return;
    }
    const { meta, tiles } = ctx;
    const table = el("table", "info-table");
    if (!tiles) {
      root.append(el("p", "hint", "Loading tile details…"));
      return;
    }
    addRow(table, "slide", meta.slides[tiles.slide[id]]);
    addRow(table, "tile", tiles.tile[id]);
    addRow(table, "level-0 x, y", `${tiles.x[id]}, ${tiles.y[id]}`);
    meta.labels.forEach((label, k) => {
      const codes = ctx.labels.get(k);
      if (codes && label.name !== "slide") {
        addRow(table, label.name, labelText(label, codes[id]));
      }
    });
    if (tiles.prob) {
      addRow(table, "p(predicted class)", (tiles.prob[id] / 100).toFixed(2));
    }
    root.append(table, tileImage(id, ctx));
    const maps = ctx.saliency.get(id);
    if (maps) {
      root.append(saliencyFigures(maps));
    }
  };

  HA.renderSelection = function (root, ids, ctx, onPick) {
    root.replaceChildren();
    if (!ids) {
      return;
    }
    const { meta, tiles, label, codes } = ctx;
    const rows = Array.from(ids);
    rows.sort((a, b) => tiles.slide[a] - tiles.slide[b] || tiles.tile[a] - tiles.tile[b]);
    const table = el("table", "selection-table");
    const head = el("tr");
    for (const name of ["slide", "tile", "x", "y", label.name]) {
      head.append(el("th", "", name));
    }
    table.append(head);
    for (const id of rows.slice(0, MAX_ROWS)) {
      const tr = el("tr");
      tr.dataset.point = String(id);
      const values = [meta.slides[tiles.slide[id]], tiles.tile[id], tiles.x[id], tiles.y[id], labelText(label, codes[id])];
      for (const value of values) {
        tr.append(el("td", "", value));
      }
      tr.addEventListener("click", () => onPick(id));
      table.append(tr);
    }
    root.append(table);
    if (rows.length > MAX_ROWS) {
      root.append(el("p", "hint", `First ${MAX_ROWS} of ${rows.length.toLocaleString()} tiles; the CSV has all.`));
    }
  };

  const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

  /** One CSV field: quoted when needed; text a spreadsheet would run as a formula is defused. */
  function field(value) {
    let text = String(value);
    if (typeof value === "string" && /^[=+\-@\t\r]/.test(text) && !NUMBER.test(text)) {
      text = `'${text}`;
    }
    return /[",\r\n]/.test(text) || /^\s|\s$/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  /** CSV of points `ids`: slide, tile, x, y, umap_x, umap_y and every other label. */
  HA.selectionCsv = function (ids, ctx) {
    const { meta, tiles, xy, labels } = ctx;
    const keys = ["slide", "tile", "x", "y", "umap_x", "umap_y"];
    const extra = meta.labels.map((label, k) => [label, k]).filter(([label]) => !keys.includes(label.name));
    const header = [...keys, ...extra.map(([label]) => label.name)];
    const lines = [header.map(field).join(",")];
    const rows = Array.from(ids).sort((a, b) => tiles.slide[a] - tiles.slide[b] || tiles.tile[a] - tiles.tile[b]);
    for (const id of rows) {
      const values = [
        meta.slides[tiles.slide[id]],
        tiles.tile[id],
        tiles.x[id],
        tiles.y[id],
        (xy[2 * id] / HA.Q).toFixed(6),
        (xy[2 * id + 1] / HA.Q).toFixed(6),
        ...extra.map(([label, k]) => labelText(label, labels.get(k)[id])),
      ];
      lines.push(values.map(field).join(","));
    }
    return `${lines.join("\r\n")}\r\n`;
  };

  HA.download = function (text, name) {
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
    const link = el("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  };
})();
