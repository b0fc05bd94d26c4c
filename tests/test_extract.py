"""extract_slide end to end on synthetic slides, Features on a WSI, and progress lines."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import histoatlas
from histoatlas.analysis.features import Features
from histoatlas.atomic import is_partial
from histoatlas.backends import load_model
from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.errors import ConfigError, ModelError, SlideError
from histoatlas.io.slide_h5 import read_slide_h5
from histoatlas.io.tiling import TileOptions
from histoatlas.io.wsi import WSI
from histoatlas.progress import Progress, format_seconds
from tests.extracting import extract

TILE_PX, TILE_UM = 32, 64  # 128 level-0 px at 0.5 um/px
SIZE = (1024, 768)  # an 8 x 6 grid
TISSUE = ((256, 128, 768, 512), (0, 640, 256, 768))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    torch.save(demo_cnn(num_classes=3, width=8).state_dict(), path / "weights.pt")
    ModelParams(
        tile_px=TILE_PX,
        tile_um=TILE_UM,
        class_names=("tumor", "stroma", "fat"),
        architecture_kwargs={"width": 8},
    ).to_json(path / "params.json")
    return path


@pytest.fixture
def slide(synthetic_slide):
    return synthetic_slide("s1", size=SIZE, tissue=TISSUE, n_levels=2)


def run(slide_path, out_path, model, **kwargs):
    kwargs = {"tile_px": TILE_PX, "tile_um": TILE_UM, "num_workers": 2, **kwargs}
    return extract(slide_path, out_path, model=model, **kwargs)


def test_extract_slide_end_to_end(slide, model_dir, tmp_path, caplog):
    out = tmp_path / "features" / "s1.h5"
    with caplog.at_level(logging.INFO, logger="histoatlas"):
        qc = run(slide.path, out, model_dir, layers=["block2", "postconv"], batch_size=4)

    sf = read_slide_h5(out)
    wsi = WSI(slide.path, TILE_PX, TILE_UM)
    n = len(sf)
    assert qc["n_grid"] == 48 and wsi.grid_shape == (8, 6)
    assert qc["n_candidates"] == len(wsi.candidates) and qc["n_kept"] == n > 10
    assert qc["n_filtered"] == qc["n_candidates"] - n
    assert qc["seconds"] > 0 and qc["tiles_per_s"] == pytest.approx(n / qc["seconds"])
    assert qc["seconds_total"] >= qc["seconds"]

    # locations: level-0 top-left corners of grid tiles, row by row, all on tissue
    np.testing.assert_array_equal(sf.coords, wsi.coords_of(sf.grid))
    assert sf.coords.dtype == np.int64 and sf.grid.dtype == np.int32
    order = np.lexsort((sf.grid[:, 0], sf.grid[:, 1]))
    np.testing.assert_array_equal(order, np.arange(n))
    assert all(slide.covers(x, y, wsi.patch_size_level0) >= 0.5 for x, y in sf.coords)

    # activations: the same as Features on the same tiles read directly
    tiles = np.stack([wsi.read_tile(x, y) for x, y in sf.coords])
    features = Features(load_model(model_dir), ["block2", "postconv"])
    feats, preds = features(tiles)
    np.testing.assert_allclose(sf.features, feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sf.predictions, preds, rtol=1e-5, atol=1e-7)
    assert sf.features.shape == (n, 16 + 32) and sf.predictions.shape == (n, 3)

    sha = hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest()
    assert sf.attrs == {
        "slide": "s1",
        "slide_path": str(slide.path),
        "mpp": 0.5,
        "level0_width": 1024,
        "level0_height": 768,
        "tile_px": TILE_PX,
        "tile_um": float(TILE_UM),
        "patch_size_level0": 128,
        "stride_div": 1,
        "grid_shape": (8, 6),
        "layers": ["block2", "postconv"],
        "layer_slices": {"block2": [0, 16], "postconv": [16, 48]},
        "pooling": "avg",
        "model": str(model_dir),
        "model_sha256": sha,
        "class_names": ["tumor", "stroma", "fat"],
        "histoatlas_version": histoatlas.__version__,
        "precision": "float32",  # compute precision of the forward pass
        # how tiles became the network's input: as they are (no input_px in params.json)
        "input_px": TILE_PX,
        "interpolation": "bilinear",
        "view_fraction": 1.0,
        # the tile counts, for the cohort's qc table
        "n_grid": 48,
        "n_candidates": qc["n_candidates"],
        "n_kept": n,
        "n_filtered": qc["n_filtered"],
        # who decoded the tiles, and at what cost (level 1 of 2: 128 px read as 64, resized)
        "reader": "tiled-jpeg",
        "reader_reason": "TIFF page 1, YCbCr JPEG tiles of 256x256 px, each decoded once "
        "with libjpeg-turbo (OpenSlide's pixels)",
        "reader_option": "auto",
        "read_level": 1,
        "reader_levels": ["tiled-jpeg", "tiled-jpeg"],
        "reader_fallbacks": 0,
    }
    assert qc["reader"] == "tiled-jpeg" and 0 < qc["read_ms_per_tile"] < 1000
    assert sf.coords_attrs["patch_size"] == TILE_PX
    assert sf.coords_attrs["patch_size_level0"] == 128

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"s1: done, {qc['n_candidates']}/{qc['n_candidates']} tiles in" in text
    assert f"wrote {out} ({n} tiles)" in text
    assert (
        "s1: reader tiled-jpeg at level 1 (tiles.reader=auto): TIFF page 1, YCbCr JPEG tiles"
        in text
    )
    assert f"{qc['read_ms_per_tile']:.3f} ms of one core per tile" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["s1.h5"]  # no partial left


def test_overlapping_tiles_and_max_pooling(slide, model_dir, tmp_path):
    out = tmp_path / "s1.h5"
    qc = run(slide.path, out, model_dir, stride_div=2, pooling="max", include_preds=False)
    sf = read_slide_h5(out)
    assert qc["n_grid"] == 15 * 11 and sf.attrs["grid_shape"] == (15, 11)
    np.testing.assert_array_equal(sf.coords, sf.grid.astype(np.int64) * 64)
    assert sf.predictions is None and sf.attrs["pooling"] == "max"
    assert sf.coords_attrs["overlap"] == TILE_PX // 2
    assert qc["n_kept"] == len(sf) > qc["n_kept"] / 4


def test_features_on_wsi_nan_exactly_where_no_tile_kept(slide, model_dir, tmp_path):
    out = tmp_path / "s1.h5"
    run(slide.path, out, model_dir)
    sf = read_slide_h5(out)
    wsi = WSI(slide.path, TILE_PX, TILE_UM)
    grid, pred_grid = Features(model_dir, batch_size=5)(wsi, num_workers=2)
    assert grid.shape == (8, 6, 32) and pred_grid.shape == (8, 6, 3)
    assert grid.dtype == pred_grid.dtype == np.float32
    kept = np.zeros((8, 6), bool)
    kept[sf.grid[:, 0], sf.grid[:, 1]] = True
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(np.isnan(grid).all(axis=2), ~kept)
    np.testing.assert_array_equal(np.isnan(grid).any(axis=2), ~kept)
    np.testing.assert_array_equal(np.isnan(pred_grid).all(axis=2), ~kept)
    i, j = sf.grid[:, 0], sf.grid[:, 1]
    np.testing.assert_allclose(grid[i, j], sf.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred_grid[i, j], sf.predictions, rtol=1e-5, atol=1e-7)
    assert wsi.qc["n_kept"] == len(sf)


def test_blank_slide_gives_zero_tiles(synthetic_slide, model_dir, tmp_path):
    blank = synthetic_slide("blank", size=SIZE, tissue=(), n_levels=2)
    out = tmp_path / "blank.h5"
    grid = Features(model_dir, include_preds=False)(WSI(blank.path, TILE_PX, TILE_UM))
    assert grid.shape == (8, 6, 32) and np.isnan(grid).all()
    qc = run(blank.path, out, model_dir, layers=["block1", "postconv"])
    assert (qc["n_candidates"], qc["n_kept"], qc["tiles_per_s"]) == (0, 0, 0.0)
    sf = read_slide_h5(out)
    assert sf.features.shape == (0, 8 + 32) and sf.predictions.shape == (0, 3)
    assert sf.coords.shape == sf.grid.shape == (0, 2)
    assert sf.attrs["layer_slices"] == {"block1": [0, 8], "postconv": [8, 40]}


@pytest.mark.parametrize("where", ["model", "consumer"])
def test_failed_extraction_leaves_no_file(slide, model_dir, tmp_path, monkeypatch, where):
    calls = []
    target, name = (Features, "_forward") if where == "model" else (Progress, "set")
    original = getattr(target, name)

    def fail_on_second_call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(target, name, fail_on_second_call)
    out = tmp_path / "out" / "s1.h5"
    with pytest.raises(RuntimeError, match="simulated") as err:
        run(slide.path, out, model_dir, batch_size=4)
    assert len(calls) == 2
    assert not out.exists() and not list(out.parent.glob("*"))
    # the prefetch thread and the slide readers stopped with the failure, even while
    # the traceback (which holds the loop's frame) is still alive
    assert err.value.__traceback__ is not None
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith(("histoatlas-prefetch", "wsi-s1"))], names


def test_unreadable_slide_leaves_no_file(testdata, model_dir, tmp_path):
    out = tmp_path / "unreadable.h5"
    with pytest.raises(SlideError, match="unreadable"):
        # a 16 x 16 px slide: 4 um tiles at 0.5 um/px give a 2 x 2 grid; read them all
        run(
            testdata / "broken" / "unreadable.svs",
            out,
            model_dir,
            mpp=0.5,
            tile_um=4,
            tissue={"otsu": False},
        )
    assert not list(tmp_path.iterdir())


def test_killed_extraction_leaves_no_file(slide, model_dir, tmp_path):
    out = tmp_path / "s1.h5"
    script = textwrap.dedent(
        f"""
        import sys, time
        from histoatlas.analysis.features import Features
        import logging
        from histoatlas.analysis.extract import RunOptions, extract_slide
        from histoatlas.io.tiling import TileOptions
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
        forward = Features._forward
        def slow(self, x):
            time.sleep(0.5)
            return forward(self, x)
        Features._forward = slow
        extract_slide({str(slide.path)!r}, {str(out)!r}, model={str(model_dir)!r},
                      tiles=TileOptions(px={TILE_PX}, um={TILE_UM}),
                      run=RunOptions(batch_size=2, progress_every=0))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if " kept, " in line:  # a progress line: tiles are flowing
                break
            assert time.monotonic() < deadline, "no progress line within 60 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    # the batches written so far sit under the temporary name only, which no reader takes
    # for a slide file, and the next complete extraction removes
    (left,) = tmp_path.iterdir()
    assert is_partial(left) and left.name.startswith(".s1.partial-")
    assert left.stat().st_size > 0  # batch by batch: written before the kill
    run(slide.path, out, model_dir, batch_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.h5"]


def test_tile_px_mismatch(slide, model_dir, tmp_path):
    out = tmp_path / "s1.h5"
    with pytest.raises(ModelError) as err:
        run(slide.path, out, model_dir, tile_px=64)
    message = str(err.value)
    assert "trained on 32 px tiles" in message and "tiles.px = 64" in message
    assert "allow_model_mismatch" in message
    assert not out.exists()
    qc = run(slide.path, out, model_dir, tile_px=64, allow_tile_px_mismatch=True)
    sf = read_slide_h5(out)
    assert sf.attrs["tile_px"] == 64 and len(sf) == qc["n_kept"] > 0


def test_bad_options_are_config_errors(slide, model_dir, tmp_path):
    with pytest.raises(TypeError, match="otsu_level"):
        TileOptions(px=32, um=64, otsu_level=3)
    with pytest.raises(ConfigError, match="tile_um='big'"):
        run(slide.path, tmp_path / "b.h5", model_dir, tile_um="big")
    assert not list(tmp_path.iterdir())


def test_tissue_options_reach_the_wsi(slide, model_dir, tmp_path):
    qc = run(slide.path, tmp_path / "all.h5", model_dir, tissue={"otsu": False})
    assert qc["n_candidates"] == 48  # every grid tile is a candidate without Otsu
    # the white background tiles now reach the filters: grayspace drops them
    assert qc["n_filtered"] > 0 and qc["n_kept"] < 48


def test_progress_lines_are_throttled(monkeypatch):
    now = [100.0]
    out = []
    p = Progress(1000, label="s1", every=5, clock=lambda: now[0], write=out.append)
    for _ in range(10):  # 1 s and 50 tiles per step
        now[0] += 1
        p.update(50, note="40 kept")
    lines = list(out)
    assert lines == [
        "s1: 250/1000 tiles (25%), 40 kept, 50.0 tiles/s, ETA 15s",
        "s1: 500/1000 tiles (50%), 40 kept, 50.0 tiles/s, ETA 10s",
    ]
    now[0] += 2
    p.close(done=1000)
    assert out[-1] == "s1: done, 1000/1000 tiles in 12s (83.3 tiles/s), 40 kept"


def test_progress_goes_to_the_logger(caplog):
    with caplog.at_level(logging.INFO, logger="histoatlas.progress"):
        p = Progress(0, label="", every=0, clock=lambda: 1.0)
        p.set(0)
        p.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "histoatlas.progress"]
    assert lines == ["0/0 tiles (100%), 0.0 tiles/s, ETA ?", "done, 0/0 tiles in 0s (0.0 tiles/s)"]


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 59.6, 187.4, 7500)] == [
        "4s",
        "1m00s",
        "3m07s",
        "2h05m",
    ]


def test_batch_size_reaches_extract(slide, model_dir, tmp_path, monkeypatch):
    sizes = []
    monkeypatch.setattr(Features, "_forward", _counting(Features._forward, sizes))
    qc = run(slide.path, tmp_path / "s1.h5", model_dir, batch_size=3)
    assert sizes[0] == 1  # the probe of the layers' widths, one blank tile
    assert max(sizes[1:]) == 3 and sum(sizes[1:]) == qc["n_kept"]


def _counting(forward, sizes):
    def counted(self, x):
        sizes.append(len(x))
        return forward(self, x)

    return counted


def test_cpu_threads_leave_cores_to_readers(model_dir, monkeypatch):
    from histoatlas.backends import load_model

    model = load_model(model_dir, device="cpu")
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    torch.set_num_threads(16)
    try:
        with model.cpu_threads(4) as threads:
            assert threads == torch.get_num_threads() == 12
        assert torch.get_num_threads() == 16  # restored
        with model.cpu_threads(None) as threads:
            assert threads == 12  # WSI's default: 4 readers
        with model.cpu_threads(12) as threads:
            assert threads == 8  # readers get at most half the cores
        model.device = "cuda"  # a model on the GPU keeps every thread
        with model.cpu_threads(4) as threads:
            assert threads == torch.get_num_threads() == 16
        model.device = "cpu"
        torch.set_num_threads(2)
        with model.cpu_threads(4) as threads:
            assert threads == 2  # never raised
    finally:
        torch.set_num_threads(before)


def test_tiles_out_of_candidate_order_never_reach_the_file():
    """The writer appends rows as they come: a batch out of WSI.candidates' order (a reader
    bug) stops the extraction before it is written."""
    from histoatlas.analysis.extract import _check_order, _Extracted
    from histoatlas.errors import HistoatlasError

    done = _Extracted()
    _check_order(np.array([0, 2, 5]), done)
    _check_order(np.array([6]), done)
    assert done.last == 6
    for bad in ([6, 7], [8, 8], [9, 8]):  # a repeat of the last, within, or going back
        with pytest.raises(HistoatlasError, match="out of grid order"):
            _check_order(np.array(bad), done)
    assert done.last == 6
