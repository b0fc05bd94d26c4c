"""Data files of the atlas page: binary arrays and JSON inside ``<script>`` files.

Chromium refuses ``fetch`` and XHR from a ``file://`` page to its own folder, but it runs
classic ``<script src>`` files from there. So every data file is a small JavaScript
file that hands its payload to the page's receiver::

    HistoAtlas.receive("points", {}, {"xy": ["uint16", [216, 2], "AAAB..."]});

Arrays travel as little-endian bytes in base64 (4/3 of their size; decoded at about
1 GB/s), with their dtype and shape; everything else as JSON. Both are ASCII only
(``json.dumps(ensure_ascii=True)``, base64), so no value can close the string it sits in,
and untrusted text (labels, slide ids) stays data: the page shows it with ``textContent``.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# dtypes the page decodes (its typed arrays); keys are numpy's names
JS_TYPES = {
    "uint8": "uint8",
    "int8": "int8",
    "uint16": "uint16",
    "int16": "int16",
    "uint32": "uint32",
    "int32": "int32",
    "float32": "float32",
}
# names of data files and payloads: the page builds script paths from them
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def encode_array(array: np.ndarray) -> list:
    """An array as ``[dtype, shape, base64 of its little-endian bytes]``.

    Parameters
    ----------
    array : ndarray
        Of a dtype in :data:`JS_TYPES`.

    Returns
    -------
    list
        ``[str, list of int, str]``, JSON-ready.

    Raises
    ------
    TypeError
        For another dtype (say which).

    Examples
    --------
    >>> encode_array(np.array([1, 2], dtype=np.uint16))
    ['uint16', [2], 'AQACAA==']
    """
    array = np.asarray(array)
    name = array.dtype.name
    if name not in JS_TYPES:
        raise TypeError(
            f"array of dtype {name} cannot go into an atlas data file; "
            f"use one of {', '.join(JS_TYPES)}"
        )
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return [JS_TYPES[name], list(array.shape), base64.b64encode(data).decode("ascii")]


# escaped inside JSON strings too, so the text is safe even if inlined into HTML one day
_HTML_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def to_json(value: Any) -> str:
    """``value`` as ASCII JSON without ``<``, ``>``, ``&``; NaN and infinities as ``null``.

    Examples
    --------
    >>> to_json({"label": "<b>", "n": np.int64(2), "v": float("nan")})
    '{"label":"\\u003cb\\u003e","n":2,"v":null}'
    """
    text = json.dumps(_plain(value), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.translate(_HTML_ESCAPES)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def data_script(name: str, payload: Mapping[str, Any]) -> str:
    """The text of one data file: ``HistoAtlas.receive(name, json, arrays);``.

    Parameters
    ----------
    name : str
        Payload name (lower-case letters, digits, ``-``, ``_``).
    payload : mapping
        JSON-able values and numpy arrays; the arrays go into the third argument,
        each encoded with :func:`encode_array`.

    Returns
    -------
    str
        ASCII JavaScript.

    Examples
    --------
    >>> data_script("points", {"n": 1, "xy": np.zeros(2, np.uint16)})
    'HistoAtlas.receive("points",{"n":1},{"xy":["uint16",[2],"AAAAAA=="]});\\n'
    """
    check_name(name)
    arrays = {k: encode_array(v) for k, v in payload.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in payload.items() if not isinstance(v, np.ndarray)}
    return f"HistoAtlas.receive({to_json(name)},{to_json(rest)},{to_json(arrays)});\n"


def write_data_script(path: str | os.PathLike, name: str, payload: Mapping[str, Any]) -> int:
    """Write :func:`data_script` to ``path``; returns its size in bytes.

    Written in place: the atlas is built in a temporary folder renamed when complete.
    """
    text = data_script(name, payload)
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)
    return len(text)


def check_name(name: str) -> str:
    """``name`` if it is a safe payload/file name, else ValueError naming it."""
    if not name or not set(name) <= _NAME_CHARS:
        raise ValueError(f"atlas data name {name!r} must be lower-case letters, digits, '-' or '_'")
    return name


def quantize_unit(values: np.ndarray) -> np.ndarray:
    """Coordinates in [0, 1] as uint16 ``round(v * 65535)`` (the page divides by 65535).

    Non-finite values map to 0; values outside [0, 1] are clipped.

    Returns
    -------
    ndarray, dtype uint16
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(values, 0.0, 1.0) * 65535).astype(np.uint16)


def smallest_uint(max_value: int) -> type:
    """The smallest of uint8, uint16, uint32 that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"{max_value} does not fit in uint32")


def read_data_script(path: str | os.PathLike) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Read a data file back: its name, JSON values and arrays (the page's view of it).

    Returns
    -------
    name : str
    values : dict
    arrays : dict of str to ndarray
    """
    text = Path(path).read_text(encoding="ascii")
    prefix, suffix = "HistoAtlas.receive(", ");\n"
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise ValueError(f"{path} is not an atlas data file (HistoAtlas.receive(...);)")
    name, values, encoded = json.loads(f"[{text[len(prefix) : -len(suffix)]}]")
    arrays = {}
    for key, (dtype, shape, data) in encoded.items():
        raw = np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype).newbyteorder("<"))
        arrays[key] = raw.astype(dtype).reshape(shape)
    return name, values, arrays
