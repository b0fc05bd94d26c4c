"""The per-slide HDF5 schema: datasets, dtypes, attributes, TRIDENT attributes, N = 0."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import histoatlas
from histoatlas.errors import HistoatlasError
from histoatlas.io import slide_h5
from histoatlas.io.slide_h5 import FILE_ATTRS, read_slide_h5, write_slide_h5


def make_attrs(**overrides) -> dict:
    attrs = {
        "slide": "s1",
        "slide_path": "slides/s1.svs",
        "mpp": 0.25,
        "level0_width": 4000,
        "level0_height": 3000,
        "tile_px": 224,
        "tile_um": 112.0,
        "patch_size_level0": 448,
        "stride_div": 2,
        "grid_shape": (16, 12),
        "layers": ["block3", "postconv"],
        "layer_slices": {"block3": [0, 4], "postconv": [4, 6]},
        "pooling": "avg",
        "model": "resources/demo/model",
        "model_sha256": "ab" * 32,
        "class_names": ["tumor", "stroma", "fat"],
        "histoatlas_version": histoatlas.__version__,
    }
    attrs.update(overrides)
    return attrs


def make_arrays(n: int, rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    grid = np.stack([rng.integers(0, 16, n), rng.integers(0, 12, n)], axis=1)
    return {
        "features": rng.normal(size=(n, 6)),  # float64 in, float32 stored
        "coords": grid * 224,
        "grid": grid,
        "predictions": rng.dirichlet(np.ones(3), size=n),
    }


def test_round_trip_schema(tmp_path):
    arrays = make_arrays(9)
    path = tmp_path / "s1.h5"
    write_slide_h5(path, **arrays, attrs=make_attrs())
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["coords", "features", "grid", "predictions"]
        expected = {
            "features": ((9, 6), np.float32),
            "coords": ((9, 2), np.int64),
            "grid": ((9, 2), np.int32),
            "predictions": ((9, 3), np.float32),
        }
        for name, (shape, dtype) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype, name
        assert set(f.attrs) == set(FILE_ATTRS)
        # JSON attributes are JSON strings on disk, readable without histoatlas
        assert json.loads(f.attrs["layers"]) == ["block3", "postconv"]
        assert json.loads(f.attrs["layer_slices"]) == {"block3": [0, 4], "postconv": [4, 6]}
        assert json.loads(f.attrs["class_names"]) == ["tumor", "stroma", "fat"]
        assert f.attrs["grid_shape"].tolist() == [16, 12]
    sf = read_slide_h5(path)
    assert len(sf) == 9
    np.testing.assert_array_equal(sf.features, arrays["features"].astype(np.float32))
    np.testing.assert_array_equal(sf.coords, arrays["coords"])
    np.testing.assert_array_equal(sf.grid, arrays["grid"])
    np.testing.assert_array_equal(sf.predictions, arrays["predictions"].astype(np.float32))
    assert (sf.features.dtype, sf.coords.dtype, sf.grid.dtype) == (
        np.float32,
        np.int64,
        np.int32,
    )
    assert sf.attrs == make_attrs()  # every attribute, decoded to Python values
    assert isinstance(sf.attrs["mpp"], float) and isinstance(sf.attrs["tile_px"], int)


def test_trident_coords_attributes(tmp_path):
    path = tmp_path / "s1.h5"
    write_slide_h5(path, **make_arrays(3), attrs=make_attrs())
    sf = read_slide_h5(path)
    assert sf.coords_attrs == {
        "patch_size": 224,  # tile edge at the target magnification
        "patch_size_level0": 448,
        "level0_magnification": pytest.approx(40.0),  # 0.25 um/px
        "target_magnification": pytest.approx(20.0),  # 224 px over 112 um: 0.5 um/px
        "overlap": 112,  # stride_div 2: half a tile, in target pixels
        "level0_width": 4000,
        "level0_height": 3000,
    }
    # TRIDENT derives the level-0 patch size from these; it must agree
    a = sf.coords_attrs
    size = round(a["patch_size"] * a["level0_magnification"] / a["target_magnification"])
    assert size == a["patch_size_level0"]
    # a TRIDENT/CLAM-style reader: plain h5py, datasets by name
    with h5py.File(path, "r") as f:
        assert f["features"][:].shape == (3, 6) and f["coords"][:].dtype == np.int64
        assert int(f["coords"].attrs["patch_size_level0"]) == 448


def test_no_tissue_gives_zero_rows(tmp_path):
    path = tmp_path / "blank.h5"
    write_slide_h5(
        path,
        features=np.zeros((0, 6), np.float32),
        coords=np.zeros((0, 2), np.int64),
        grid=np.zeros((0, 2), np.int32),
        predictions=np.zeros((0, 3), np.float32),
        attrs=make_attrs(slide="blank"),
    )
    sf = read_slide_h5(path)
    assert sf.features.shape == (0, 6) and sf.features.dtype == np.float32
    assert sf.coords.shape == (0, 2) and sf.grid.shape == (0, 2)
    assert sf.predictions.shape == (0, 3)
    assert sf.attrs["slide"] == "blank" and sf.coords_attrs["patch_size"] == 224


def test_without_predictions(tmp_path):
    arrays = make_arrays(4)
    arrays["predictions"] = None
    write_slide_h5(tmp_path / "s.h5", **arrays, attrs=make_attrs(class_names=[]))
    sf = read_slide_h5(tmp_path / "s.h5")
    assert sf.predictions is None and sf.attrs["class_names"] == []
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert "predictions" not in f


def test_invalid_input_is_refused(tmp_path):
    arrays = make_arrays(4)
    with pytest.raises(ValueError, match=r"attrs lack \['model_sha256'\]"):
        write_slide_h5(tmp_path / "a.h5", **arrays, attrs=make_attrs(model_sha256=None))
    bad = dict(arrays, coords=arrays["coords"][:3])
    with pytest.raises(ValueError, match="coords must be 2-D with 4 rows"):
        write_slide_h5(tmp_path / "b.h5", **bad, attrs=make_attrs())
    bad = dict(arrays, grid=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        write_slide_h5(tmp_path / "c.h5", **bad, attrs=make_attrs())
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "s1.h5"
    encode = slide_h5._encode

    def fail(key, value):  # fails half-way through the attributes
        if key == "model":
            raise RuntimeError("disk full")
        return encode(key, value)

    monkeypatch.setattr(slide_h5, "_encode", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_slide_h5(path, **make_arrays(5), attrs=make_attrs())
    assert not list(tmp_path.iterdir())  # neither the final nor the partial file


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(HistoatlasError, match="missing.h5 does not exist"):
        read_slide_h5(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(HistoatlasError, match="text.h5 is not a readable HDF5 file"):
        read_slide_h5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "clam.h5", "w") as f:  # a CLAM file has no grid
        f["features"] = np.zeros((2, 3), np.float32)
        f["coords"] = np.zeros((2, 2), np.int64)
    with pytest.raises(HistoatlasError, match=r"lacks dataset\(s\) \['grid'\]"):
        read_slide_h5(tmp_path / "clam.h5")
