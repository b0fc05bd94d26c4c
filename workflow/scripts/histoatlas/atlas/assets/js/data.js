/* histoatlas atlas: the data files and their loading.
 *
 * Every data file is a classic script that calls HistoAtlas.receive(name, json, arrays):
 * Chromium refuses fetch/XHR from a file:// page, but runs <script src> files beside it.
 * Arrays come as [dtype, shape, base64 of little-endian bytes] and become typed arrays.
 * Files not named in index.html are loaded on demand with HistoAtlas.load(name, src).
 */
(function () {
  "use strict";

  const HA = (window.HistoAtlas = window.HistoAtlas || {});
  const CTORS = {
    uint8: Uint8Array,
    int8: Int8Array,
    uint16: Uint16Array,
    int16: Int16Array,
    uint32: Uint32Array,
    int32: Int32Array,
    float32: Float32Array,
  };
  const store = new Map();
  const pending = new Map();

  function base64ToBytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") {
      return Uint8Array.fromBase64(text);
    }
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes;
  }

  function decodeArray(name, key, spec) {
    const [dtype, shape, text] = spec;
    const Ctor = CTORS[dtype];
    if (!Ctor) {
      throw new Error(`data file ${name}: array ${key} has unknown dtype ${dtype}`);
    }
    const bytes = base64ToBytes(text);
    const array = new Ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / Ctor.BYTES_PER_ELEMENT);
    const expected = shape.reduce((a, b) => a * b, 1);
    if (array.length !== expected) {
      throw new Error(`data file ${name}: array ${key} has ${array.length} values, expected ${expected}`);
    }
    return array;
  }

  /** Called by each data file: keep its payload (JSON values and decoded arrays). */
  HA.receive = function (name, json, arrays) {
    const payload = Object.assign({}, json);
    for (const [key, spec] of Object.entries(arrays || {})) {
      payload[key] = decodeArray(name, key, spec);
    }
    store.set(name, payload);
    const waiting = pending.get(name);
    if (waiting) {
      pending.delete(name);
      waiting.resolve(payload);
    }
  };

  /** The payload of a data file already received, or undefined. */
  HA.get = function (name) {
    return store.get(name);
  };

  /** Promise of the payload of data file `name`, loading `src` (a relative path) if needed. */
  HA.load = function (name, src) {
    if (store.has(name)) {
      return Promise.resolve(store.get(name));
    }
    if (pending.has(name)) {
      return pending.get(name).promise;
    }
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    pending.set(name, { promise, resolve, reject });
    const script = document.createElement("script");
    script.src = src;
    script.async = true;
    script.onerror = () => {
      pending.delete(name);
      reject(new Error(`could not load ${src}: keep the atlas folder's data/ beside index.html`));
    };
    document.body.appendChild(script);
    return promise;
  };

  /** "#rrggbb" to a little-endian RGBA pixel (0xAABBGGRR); grey for anything else. */
  HA.pixelOf = function (hex, alpha) {
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(String(hex));
    const [r, g, b] = m ? [1, 2, 3].map((k) => parseInt(m[k], 16)) : [200, 200, 200];
    return (((alpha === undefined ? 255 : alpha) << 24) | (b << 16) | (g << 8) | r) >>> 0;
  };

  /** A safe CSS colour: the hex string itself when it is one, else grey. */
  HA.cssColour = function (hex) {
    return /^#[0-9a-f]{6}$/i.test(String(hex)) ? hex : "#c8c8c8";
  };

  /** Show a problem in the page's status line (as text) and in the console. */
  HA.fail = function (message) {
    const status = document.getElementById("status");
    if (status) {
      status.textContent = message;
      status.hidden = false;
    }
    console.error(message);
  };

  HA.state = {
    firstPaintMs: null,
    pointsDrawn: 0,
    mosaicMaxLevel: -1,
    mosaicTilesLoaded: 0,
    tilesReady: false,
    selection: null,
  };
})();
