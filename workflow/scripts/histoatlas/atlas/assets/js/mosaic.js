/* histoatlas atlas: the mosaic map as a Deep Zoom pyramid in OpenSeadragon.
 *
 * The tile source descriptor is inline (meta.mosaic.dzi): a file:// page cannot fetch a
 * .dzi file. Tiles load as images. The canvas drawer is used because images from file://
 * taint a canvas, and a tainted image cannot become a WebGL texture. Hovered, pinned and
 * selected cells are outlined on a canvas laid over the viewer.
 */
(function () {
  "use strict";

  const HA = window.HistoAtlas;

  class MosaicView {
    constructor(container, overlay, mosaicMeta, cells, on) {
      this.meta = mosaicMeta;
      this.cells = cells; // Int32Array: point of each cell (j * cols + i, j = 0 bottom) or -1
      this.overlay = overlay;
      this.octx = overlay.getContext("2d");
      this.highlighted = null; // Uint8Array per cell, or null
      this.marks = { hover: -1, pinned: -1, linked: -1 }; // cells (j * cols + i), -1: none
      this.viewer = OpenSeadragon({
        element: container,
        tileSources: mosaicMeta.dzi,
        drawer: "canvas",
        showNavigationControl: false,
        showNavigator: true,
        navigatorPosition: "BOTTOM_RIGHT",
        navigatorAutoFade: false,
        visibilityRatio: 0.5,
        minZoomImageRatio: 0.5,
        maxZoomPixelRatio: 4,
        imageLoaderLimit: 8,
        crossOriginPolicy: false,
        loadTilesWithAjax: false,
        gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      });
      this.viewer.addHandler("tile-loaded", (event) => {
        HA.state.mosaicTilesLoaded++;
        HA.state.mosaicMaxLevel = Math.max(HA.state.mosaicMaxLevel, event.tile.level);
      });
      this.viewer.addHandler("open-failed", (event) => HA.fail(`mosaic: ${event.message}`));
      this.viewer.addHandler("tile-load-failed", (event) =>
        HA.fail(`mosaic tile ${event.tile.url} did not load: ${event.message}`)
      );
      this.viewer.addHandler("update-viewport", () => this.drawOverlay());
      this.viewer.addHandler("resize", () => this.resize());
      this.viewer.addHandler("canvas-click", (event) => {
        if (event.quick) {
          const cell = this.filledCellAt(event.position);
          on.click(cell < 0 ? -1 : this.cells[cell], cell);
        }
      });
      new OpenSeadragon.MouseTracker({
        element: this.viewer.canvas,
        moveHandler: (event) => this.hover(this.filledCellAt(event.position), on),
        leaveHandler: () => this.hover(-1, on),
      });
      this.resize();
    }

    resize() {
      const rect = this.overlay.parentElement.getBoundingClientRect();
      const dpr = window.devicePixelRatio || 1;
      this.overlay.width = Math.round(rect.width * dpr);
      this.overlay.height = Math.round(rect.height * dpr);
      this.dpr = dpr;
      this.drawOverlay();
    }

    hover(cell, on) {
      if (cell !== this.marks.hover) {
        this.marks.hover = cell;
        this.drawOverlay();
        on.hover(cell < 0 ? -1 : this.cells[cell]);
      }
    }

    /** Cell index (j * cols + i) under a viewer-element position, or -1. */
    cellAt(position) {
      const { cols, rows, tile_px: px } = this.meta;
      const image = this.viewer.viewport.viewerElementToImageCoordinates(position);
      const i = Math.floor(image.x / px);
      const r = Math.floor(image.y / px);
      if (i < 0 || r < 0 || i >= cols || r >= rows) {
        return -1;
      }
      return (rows - 1 - r) * cols + i;
    }

    /** The cell at a viewer-element position when it shows a tile, else -1. */
    filledCellAt(position) {
      const cell = this.cellAt(position);
      return cell >= 0 && this.cells[cell] >= 0 ? cell : -1;
    }

    /** Outline the cells of `mask` (Uint8Array per cell), or none. */
    setHighlight(mask) {
      this.highlighted = mask;
      this.drawOverlay();
    }

    /** Centre the view on cell `cell` without changing the zoom. */
    panToCell(cell) {
      const rect = this.cellRect(cell, false);
      this.viewer.viewport.panTo(rect.getCenter());
    }

    /** The cell's rectangle, in viewport coordinates or (device) px of the overlay. */
    cellRect(cell, inPixels) {
      const { cols, rows, tile_px: px } = this.meta;
      const i = cell % cols;
      const r = rows - 1 - Math.floor(cell / cols);
      const rect = this.viewer.viewport.imageToViewportRectangle(i * px, r * px, px, px);
      if (!inPixels) {
        return rect;
      }
      const topLeft = this.viewer.viewport.viewportToViewerElementCoordinates(rect.getTopLeft());
      const bottomRight = this.viewer.viewport.viewportToViewerElementCoordinates(rect.getBottomRight());
      return {
        x: topLeft.x * this.dpr,
        y: topLeft.y * this.dpr,
        w: (bottomRight.x - topLeft.x) * this.dpr,
        h: (bottomRight.y - topLeft.y) * this.dpr,
      };
    }

    /** Client (CSS px) centre of cell `cell`, for tests and scripts. */
    clientOfCell(cell) {
      const { x, y, w, h } = this.cellRect(cell, true);
      const rect = this.viewer.element.getBoundingClientRect();
      return [rect.left + (x + w / 2) / this.dpr, rect.top + (y + h / 2) / this.dpr];
    }

    drawOverlay() {
      const ctx = this.octx;
      ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
      if (!this.viewer.world.getItemCount()) {
        return;
      }
      const outline = (cell, colour, width) => {
        if (cell < 0) {
          return;
        }
        const { x, y, w, h } = this.cellRect(cell, true);
        ctx.lineWidth = width * this.dpr;
        ctx.strokeStyle = colour;
        ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, w - ctx.lineWidth, h - ctx.lineWidth);
      };
      if (this.highlighted) {
        for (let c = 0; c < this.highlighted.length; c++) {
          if (this.highlighted[c]) {
            outline(c, "#1f77b4", 2);
          }
        }
      }
      outline(this.marks.linked, "#ff8c00", 3);
      outline(this.marks.pinned, "#000000", 3);
      outline(this.marks.hover, "#d62728", 2);
    }
  }

  HA.MosaicView = MosaicView;
})();
