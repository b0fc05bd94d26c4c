/* histoatlas atlas: mouse and wheel on the UMAP scatter.
 *
 * Select mode (default): drag a box to select the points inside it. Pan mode, shift-drag
 * or right-drag: move the map. Wheel: zoom at the pointer. Double-click: whole map.
 * Hover shows the nearest point (within 8 px); a click pins it.
 */
(function () {
  "use strict";

  const HA = window.HistoAtlas;
  const PICK_RADIUS = 8; // CSS px
  const CLICK_SLOP = 3; // CSS px a click may move

  HA.bindScatter = function (scatter, on) {
    const target = scatter.overlay;
    let mode = "select";
    let drag = null;
    let hoverFrame = 0;
    let lastMove = null;

    function hoverAt(event) {
      lastMove = scatter.eventPx(event);
      if (hoverFrame) {
        return;
      }
      hoverFrame = requestAnimationFrame(() => {
        hoverFrame = 0;
        const id = scatter.pick(lastMove[0], lastMove[1], PICK_RADIUS * scatter.dpr);
        if (id !== scatter.marks.hover) {
          scatter.marks.hover = id;
          scatter.drawOverlay();
          on.hover(id);
        }
      });
    }

    target.addEventListener("pointerdown", (event) => {
      const [px, py] = scatter.eventPx(event);
      const pan = mode === "pan" || event.shiftKey || event.button !== 0;
      drag = { x0: px, y0: py, last: [px, py], pan, moved: false };
      target.setPointerCapture(event.pointerId);
      event.preventDefault();
    });

    target.addEventListener("pointermove", (event) => {
      if (!drag) {
        hoverAt(event);
        return;
      }
      const [px, py] = scatter.eventPx(event);
      if (Math.hypot(px - drag.x0, py - drag.y0) > CLICK_SLOP * scatter.dpr) {
        drag.moved = true;
      }
      if (drag.pan) {
        scatter.panBy(px - drag.last[0], py - drag.last[1]);
      } else if (drag.moved) {
        scatter.box = { x0: drag.x0, y0: drag.y0, x1: px, y1: py };
        scatter.drawOverlay();
      }
      drag.last = [px, py];
    });

    target.addEventListener("pointerup", (event) => {
      if (!drag) {
        return;
      }
      const [px, py] = scatter.eventPx(event);
      const done = drag;
      drag = null;
      scatter.box = null;
      scatter.drawOverlay();
      if (!done.moved) {
        on.click(scatter.pick(px, py, PICK_RADIUS * scatter.dpr));
      } else if (!done.pan) {
        const [xa, ya] = scatter.toData(done.x0, done.y0);
        const [xb, yb] = scatter.toData(px, py);
        on.select({
          x0: Math.min(xa, xb),
          x1: Math.max(xa, xb),
          y0: Math.min(ya, yb),
          y1: Math.max(ya, yb),
        });
      }
    });

    target.addEventListener("pointerleave", () => {
      if (!drag && scatter.marks.hover >= 0) {
        scatter.marks.hover = -1;
        scatter.drawOverlay();
        on.hover(-1);
      }
    });

    target.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const [px, py] = scatter.eventPx(event);
        const lines = event.deltaMode === 1 ? 40 : event.deltaMode === 2 ? 400 : 1;
        scatter.zoomAt(px, py, Math.exp(-event.deltaY * lines * 0.0015));
      },
      { passive: false }
    );

    target.addEventListener("dblclick", () => scatter.fit());
    target.addEventListener("contextmenu", (event) => event.preventDefault());

    return {
      setMode(next) {
        mode = next;
        target.classList.toggle("pan", next === "pan");
      },
      get mode() {
        return mode;
      },
    };
  };
})();
