/* histoatlas atlas: the UMAP scatter on a 2D canvas, rasterised into an ImageData.
 *
 * 10^6 points are one pass over typed arrays (about 10-20 ms), so pan and zoom redraw
 * every frame, without WebGL (which headless and remote browsers often lack). Positions
 * are uint16 (x / 65535 in [0, 1]); a 256 x 256 grid index (a counting sort) answers
 * "nearest point" and "points in a box" by visiting only the cells concerned.
 */
(function () {
  "use strict";

  const HA = window.HistoAtlas;
  const Q = 65535;
  const GRID = 256; // index cells per axis (each 256 uint16 steps wide)
  const MARGIN = 0.04; // of the fitted view, around [0, 1]
  const WHITE = 0xffffffff;

  function diskOffsets(size, width) {
    const offsets = [];
    const r = size / 2;
    for (let dy = 0; dy < size; dy++) {
      for (let dx = 0; dx < size; dx++) {
        const ex = dx + 0.5 - r;
        const ey = dy + 0.5 - r;
        if (size <= 2 || ex * ex + ey * ey <= r * r + 0.25) {
          offsets.push(dy * width + dx);
        }
      }
    }
    return offsets;
  }

  class Scatter {
    constructor(canvas, overlay) {
      this.canvas = canvas;
      this.overlay = overlay;
      this.ctx = canvas.getContext("2d");
      this.octx = overlay.getContext("2d");
      this.view = { cx: 0.5, cy: 0.5, scale: 1 };
      this.fitScale = 1;
      this.selected = null; // Uint8Array mask, or null
      this.marks = { hover: -1, pinned: -1, linked: -1 };
      this.box = null; // dragging: {x0, y0, x1, y1} in device px
      this.frame = 0;
      this.resize();
    }

    /** Positions: Uint16Array [x0, y0, x1, y1, ...]. Builds the grid index. */
    setData(xy) {
      this.xy = xy;
      this.n = xy.length / 2;
      const n = this.n;
      const cellOf = new Uint32Array(n);
      const start = new Uint32Array(GRID * GRID + 1);
      for (let i = 0; i < n; i++) {
        const c = (xy[2 * i] >>> 8) + (xy[2 * i + 1] >>> 8) * GRID;
        cellOf[i] = c;
        start[c + 1]++;
      }
      for (let c = 0; c < GRID * GRID; c++) {
        start[c + 1] += start[c];
      }
      const fill = start.slice(0, GRID * GRID);
      const ids = new Uint32Array(n);
      for (let i = 0; i < n; i++) {
        ids[fill[cellOf[i]]++] = i;
      }
      this.index = { start, ids };
    }

    /** Colours: per point a code into `palette` (list of "#rrggbb"). */
    setColours(codes, palette) {
      this.codes = codes;
      this.pixels = Uint32Array.from(palette, (hex) => HA.pixelOf(hex));
      this.faded = Uint32Array.from(palette, (hex) => {
        const p = HA.pixelOf(hex);
        const mix = (shift) => Math.round(((p >>> shift) & 255) * 0.15 + 255 * 0.85);
        return ((255 << 24) | (mix(16) << 16) | (mix(8) << 8) | mix(0)) >>> 0;
      });
      this.requestRender();
    }

    setSelection(mask) {
      this.selected = mask;
      this.requestRender();
    }

    resize() {
      const dpr = window.devicePixelRatio || 1;
      const rect = this.canvas.getBoundingClientRect();
      const width = Math.max(1, Math.round(rect.width * dpr));
      const height = Math.max(1, Math.round(rect.height * dpr));
      for (const c of [this.canvas, this.overlay]) {
        c.width = width;
        c.height = height;
      }
      this.dpr = dpr;
      const oldFit = this.fitScale;
      this.fitScale = Math.min(width, height) / (1 + 2 * MARGIN);
      this.view.scale *= this.fitScale / oldFit;
      this.image = this.ctx.createImageData(width, height);
      this.buffer = new Uint32Array(this.image.data.buffer);
      this.requestRender();
    }

    fit() {
      this.view = { cx: 0.5, cy: 0.5, scale: this.fitScale };
      this.requestRender();
    }

    pointSize() {
      const n = this.n || 1;
      const base = n < 5e3 ? 5 : n < 5e4 ? 3 : n < 3e5 ? 2 : 1;
      const zoom = Math.sqrt(this.view.scale / this.fitScale);
      return Math.max(1, Math.min(12, Math.round(base * this.dpr * Math.min(zoom, 4))));
    }

    requestRender() {
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          this.render();
        });
      }
    }

    /** Rasterise every point; returns how many fell inside the canvas. */
    render() {
      if (!this.xy || !this.codes) {
        return 0;
      }
      const { width, height } = this.canvas;
      const buf = this.buffer;
      buf.fill(WHITE);
      const size = this.pointSize();
      const offsets = diskOffsets(size, width);
      let drawn = 0;
      if (this.selected) {
        drawn = this.pass(buf, offsets, size, this.faded, 0);
        this.pass(buf, offsets, size, this.pixels, 1);
      } else {
        drawn = this.pass(buf, offsets, size, this.pixels, -1);
      }
      this.ctx.putImageData(this.image, 0, 0);
      HA.state.pointsDrawn = drawn;
      this.drawOverlay();
      return drawn;
    }

    /** Draw the points whose selection flag is `only` (-1: all); count those in view. */
    pass(buf, offsets, size, pixels, only) {
      const { xy, codes, selected, n } = this;
      const { width, height } = this.canvas;
      const k = this.view.scale / Q;
      const half = (size - 1) / 2;
      const ox = width / 2 - this.view.cx * this.view.scale;
      const oy = height / 2 + this.view.cy * this.view.scale;
      const maxX = width - size;
      const maxY = height - size;
      const single = offsets.length === 1;
      let drawn = 0;
      for (let i = 0; i < n; i++) {
        if (only >= 0 && selected[i] !== only) {
          continue;
        }
        const fx = xy[2 * i] * k + ox;
        const fy = oy - xy[2 * i + 1] * k;
        if (fx < 0 || fy < 0 || fx >= width || fy >= height) {
          continue;
        }
        drawn++;
        const px = Math.min(Math.max(Math.round(fx - half), 0), maxX);
        const py = Math.min(Math.max(Math.round(fy - half), 0), maxY);
        const colour = pixels[codes[i]];
        const base = py * width + px;
        if (single) {
          buf[base] = colour;
        } else {
          for (let o = 0; o < offsets.length; o++) {
            buf[base + offsets[o]] = colour;
          }
        }
      }
      return drawn;
    }

    /** Device px of a data point (x, y in [0, 1]). */
    toDevice(x, y) {
      const { width, height } = this.canvas;
      return [
        width / 2 + (x - this.view.cx) * this.view.scale,
        height / 2 - (y - this.view.cy) * this.view.scale,
      ];
    }

    /** Data (x, y) of a device-px position on the canvas. */
    toData(px, py) {
      const { width, height } = this.canvas;
      return [
        this.view.cx + (px - width / 2) / this.view.scale,
        this.view.cy - (py - height / 2) / this.view.scale,
      ];
    }

    /** Client (CSS px) position of data point (x, y), for tests and scripts. */
    clientOfData(x, y) {
      const [px, py] = this.toDevice(x, y);
      const rect = this.canvas.getBoundingClientRect();
      return [rect.left + px / this.dpr, rect.top + py / this.dpr];
    }

    /** Client (CSS px) position of point `id`. */
    clientOf(id) {
      return this.clientOfData(this.xy[2 * id] / Q, this.xy[2 * id + 1] / Q);
    }

    /** Device px of a mouse event. */
    eventPx(event) {
      const rect = this.canvas.getBoundingClientRect();
      return [(event.clientX - rect.left) * this.dpr, (event.clientY - rect.top) * this.dpr];
    }

    /** Visit the ids of index cells overlapping data box [x0, x1] x [y0, y1]. */
    visit(x0, x1, y0, y1, fn) {
      const lo = (v) => Math.min(GRID - 1, Math.max(0, Math.floor((v * Q) / 256)));
      const { start, ids } = this.index;
      for (let gy = lo(y0); gy <= lo(y1); gy++) {
        for (let gx = lo(x0); gx <= lo(x1); gx++) {
          const c = gx + gy * GRID;
          for (let s = start[c]; s < start[c + 1]; s++) {
            fn(ids[s]);
          }
        }
      }
    }

    /** The point nearest device px (px, py) within `radius` device px, else -1. */
    pick(px, py, radius) {
      const [x, y] = this.toData(px, py);
      const r = radius / this.view.scale;
      let best = -1;
      let bestD = Infinity;
      this.visit(x - r, x + r, y - r, y + r, (i) => {
        const [qx, qy] = this.toDevice(this.xy[2 * i] / Q, this.xy[2 * i + 1] / Q);
        const d = (qx - px) ** 2 + (qy - py) ** 2;
        if (d <= radius * radius && (d < bestD || (d === bestD && i > best))) {
          best = i;
          bestD = d;
        }
      });
      return best;
    }

    /** Ids (ascending) of the points with x in [x0, x1] and y in [y0, y1] (data units). */
    inBox(x0, x1, y0, y1) {
      const found = [];
      this.visit(x0, x1, y0, y1, (i) => {
        const x = this.xy[2 * i] / Q;
        const y = this.xy[2 * i + 1] / Q;
        if (x >= x0 && x <= x1 && y >= y0 && y <= y1) {
          found.push(i);
        }
      });
      return Uint32Array.from(found).sort();
    }

    /** Zoom by `factor` keeping device px (px, py) fixed. */
    zoomAt(px, py, factor) {
      const [x, y] = this.toData(px, py);
      const scale = Math.min(Math.max(this.view.scale * factor, this.fitScale * 0.5), this.fitScale * 2000);
      const { width, height } = this.canvas;
      this.view = {
        scale,
        cx: x - (px - width / 2) / scale,
        cy: y + (py - height / 2) / scale,
      };
      this.requestRender();
    }

    panBy(dx, dy) {
      this.view.cx -= dx / this.view.scale;
      this.view.cy += dy / this.view.scale;
      this.requestRender();
    }

    drawOverlay() {
      const ctx = this.octx;
      ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
      const ring = (id, colour, width) => {
        if (id < 0 || !this.xy) {
          return;
        }
        const [px, py] = this.toDevice(this.xy[2 * id] / Q, this.xy[2 * id + 1] / Q);
        ctx.beginPath();
        ctx.arc(px, py, 7 * this.dpr, 0, 2 * Math.PI);
        ctx.lineWidth = width * this.dpr;
        ctx.strokeStyle = colour;
        ctx.stroke();
      };
      ring(this.marks.linked, "#ff8c00", 2);
      ring(this.marks.pinned, "#000000", 2.5);
      ring(this.marks.hover, "#d62728", 2);
      if (this.box) {
        const { x0, y0, x1, y1 } = this.box;
        ctx.setLineDash([5 * this.dpr, 3 * this.dpr]);
        ctx.lineWidth = this.dpr;
        ctx.strokeStyle = "#222222";
        ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
        ctx.setLineDash([]);
      }
    }
  }

  HA.Scatter = Scatter;
  HA.Q = Q;
})();
