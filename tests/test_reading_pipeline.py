"""The reading pipeline behind extraction: worker threads and processes, read-ahead,
the CPU and accelerator schedules of extract_slide, autocast precision, and writing
large pyramids tile by tile. No test asserts a time (speed lives in benchmarks/)."""

from __future__ import annotations

import multiprocessing
import pickle
import time

import numpy as np
import openslide
import pytest
import torch

from histoatlas.analysis.features import Features
from histoatlas.backends import load_model
from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.errors import ConfigError, TileReadError
from histoatlas.io.slide_h5 import read_slide_h5
from histoatlas.io.tiff import write_pyramid_tiff_tiles
from histoatlas.io.wsi import WSI
from tests.extracting import extract

FORK = "fork" in multiprocessing.get_all_start_methods()


@pytest.fixture
def slide(synthetic_slide):
    return synthetic_slide()  # 2048 x 1536 px, 40 tissue tiles of 128 px (tile_um=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    torch.save(demo_cnn(num_classes=2, width=8).state_dict(), path / "weights.pt")
    ModelParams(
        tile_px=32, tile_um=64, class_names=("a", "b"), architecture_kwargs={"width": 8}
    ).to_json(path / "params.json")
    return path


def _read_all(wsi, **kwargs):
    batches = list(wsi.iter_batches(7, **kwargs))
    return (
        [len(b.tiles) for b in batches],
        np.concatenate([b.tiles for b in batches]),
        np.concatenate([b.grid for b in batches]),
        np.concatenate([b.coords for b in batches]),
    )


# -- workers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_workers": 3},
        {"num_workers": 3, "prefetch": 0},
        {"num_workers": 2, "prefetch": 4},
        pytest.param(
            {"num_workers": 3, "processes": True},
            marks=pytest.mark.skipif(not FORK, reason="worker processes need fork"),
        ),
        pytest.param(
            {"num_workers": 1, "processes": True, "prefetch": 0},
            marks=pytest.mark.skipif(not FORK, reason="worker processes need fork"),
        ),
    ],
)
def test_every_reader_gives_the_same_batches(slide, kwargs):
    # every grid tile a candidate, white ones filtered: filtering happens in the workers
    serial = WSI(slide.path, 64, 64, otsu=False)
    expected = _read_all(serial, num_workers=0)
    assert expected[0] == [7] * 5 + [5]  # 40 of 192 candidates kept
    wsi = WSI(slide.path, 64, 64, otsu=False)
    sizes, tiles, grid, coords = _read_all(wsi, **kwargs)
    assert sizes == expected[0]
    np.testing.assert_array_equal(grid, expected[2])
    np.testing.assert_array_equal(coords, expected[3])
    np.testing.assert_array_equal(tiles, expected[1])
    np.testing.assert_array_equal(tiles[0], wsi.read_tile(*coords[0]))
    assert wsi.qc == {"n_grid": 192, "n_candidates": 192, "n_kept": 40, "n_filtered": 152}


@pytest.mark.parametrize(("prefetch", "most"), [(0, 4), (1, 8), (3, 16)])
def test_prefetch_bounds_what_is_read_ahead(slide, monkeypatch, prefetch, most):
    wsi = WSI(slide.path, 64, 64)  # 40 candidates, all kept
    calls = []
    original = WSI._read

    def counting_read(self, handle, x, y):
        calls.append((x, y))
        return original(self, handle, x, y)

    monkeypatch.setattr(WSI, "_read", counting_read)
    batches = wsi.iter_batches(4, num_workers=2, prefetch=prefetch)
    first = next(batches)
    time.sleep(0.3)  # let the workers finish whatever was submitted
    assert len(first.tiles) == 4
    # prefetch=0: the batch asked for and nothing more; else `prefetch` batches ahead
    assert 4 <= len(calls) <= most
    batches.close()


def test_bad_prefetch_is_a_config_error(slide):
    with pytest.raises(ConfigError, match=r"prefetch=-1 must be an integer >= 0"):
        WSI(slide.path, 64, 64).iter_batches(4, prefetch=-1)
    with pytest.raises(ConfigError, match=r"num_workers=1.5"):
        WSI(slide.path, 64, 64).iter_batches(4, num_workers=1.5)


@pytest.mark.skipif(not FORK, reason="worker processes need fork")
def test_worker_processes_stop_with_the_iterator(slide):
    wsi = WSI(slide.path, 64, 64, otsu=False)
    batches = wsi.iter_batches(4, num_workers=2, processes=True)
    next(batches)
    assert len(multiprocessing.active_children()) == 2
    batches.close()
    assert multiprocessing.active_children() == []
    assert wsi.qc is None  # counts only for a complete pass


@pytest.mark.skipif(not FORK, reason="worker processes need fork")
def test_unreadable_tile_in_a_worker_process(synthetic_slide):
    import tifffile

    slide = synthetic_slide(name="corrupt", tissue=[(0, 0, 2048, 1536)])
    with tifffile.TiffFile(slide.path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(slide.path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * count)
    wsi = WSI(slide.path, tile_px=128, tile_um=64, otsu=False)
    with pytest.raises(TileReadError, match=r"'corrupt'.*\(x, y\) = \(0, 0\)"):
        list(wsi.iter_batches(4, num_workers=2, processes=True))
    assert multiprocessing.active_children() == []


def test_wsi_pickles_without_its_handle(slide):
    wsi = WSI(slide.path, 64, 64)
    clone = pickle.loads(pickle.dumps(wsi))
    assert (clone.name, clone.grid_shape, clone.read_level) == (
        wsi.name,
        wsi.grid_shape,
        wsi.read_level,
    )
    assert clone._slide is not wsi._slide  # its own OpenSlide handle
    np.testing.assert_array_equal(clone[3, 3], wsi[3, 3])


# -- extract_slide schedules and precision ------------------------------------------------


def _extract(slide, model_dir, out, **kwargs):
    qc = extract(slide.path, out, model=model_dir, tile_px=32, tile_um=64, **kwargs)
    return qc, read_slide_h5(out)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overlap": True, "num_workers": 2},
        pytest.param(
            {"reader_processes": True, "num_workers": 2},
            marks=pytest.mark.skipif(not FORK, reason="worker processes need fork"),
        ),
    ],
)
def test_extract_schedules_agree(slide, model_dir, tmp_path, kwargs):
    _, serial = _extract(slide, model_dir, tmp_path / "a.h5", num_workers=2, batch_size=8)
    _, other = _extract(slide, model_dir, tmp_path / "b.h5", batch_size=8, **kwargs)
    assert len(serial) == 40
    np.testing.assert_array_equal(other.coords, serial.coords)
    np.testing.assert_allclose(other.features, serial.features, rtol=1e-5, atol=1e-6)


def test_cpu_extraction_keeps_every_core_for_the_model(slide, model_dir, tmp_path, monkeypatch):
    # reading takes turns with the model, so torch's threads are never lowered
    seen = []
    forward = Features._forward
    monkeypatch.setattr(
        Features,
        "_forward",
        lambda self, x: seen.append(torch.get_num_threads()) or forward(self, x),
    )
    before = torch.get_num_threads()
    _extract(slide, model_dir, tmp_path / "a.h5", num_workers=4, device="cpu")
    assert seen and set(seen) == {before}


def test_bfloat16_autocast_close_to_float32(slide, model_dir, tmp_path):
    tiles = np.stack([WSI(slide.path, 32, 64)[i, j] for i, j in [(2, 2), (3, 4), (11, 8)]])
    model = load_model(model_dir, device="cpu")
    exact = Features(model, ["block2", "postconv"]).run_tiles(tiles)
    low = Features(model, ["block2", "postconv"], precision="bfloat16")
    assert "precision='bfloat16'" in repr(low)
    approx = low.run_tiles(tiles)
    for a, b in zip(exact, approx, strict=True):
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=0.05, atol=0.02 * np.abs(a).max())
        assert not np.array_equal(a, b)  # it did run in bfloat16
    qc, sf = _extract(slide, model, tmp_path / "bf16.h5", precision="bfloat16")
    assert sf.attrs["precision"] == "bfloat16" and sf.features.dtype == np.float32
    assert qc["n_kept"] == len(sf) == 40


def test_bad_precision(model_dir):
    model = load_model(model_dir, device="cpu")
    with pytest.raises(ConfigError, match=r"precision 'half' is not one of float32, bfloat16"):
        Features(model, precision="half")
    with pytest.raises(ConfigError, match=r"'float16' is for CUDA; on the CPU use 'bfloat16'"):
        Features(model, precision="float16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_matches_direct_forward(slide, model_dir):
    from collections import namedtuple

    Batch = namedtuple("Batch", "tiles")
    model = load_model(model_dir, device="cuda")
    features = Features(model, batch_size=8)
    tiles = np.stack([WSI(slide.path, 32, 64)[i, j] for i in range(2, 8) for j in range(2, 6)])
    direct = features.run_tiles(tiles)[0]
    batches = [Batch(tiles[:5]), Batch(tiles[5:20]), Batch(tiles[20:])]
    streamed = np.concatenate([f for _, f, _ in features.iter_features(batches)])
    np.testing.assert_allclose(streamed, direct, rtol=1e-4, atol=1e-5)


# -- pyramids written tile by tile -------------------------------------------------------


def test_write_pyramid_tiff_tiles(tmp_path):
    y, x = np.mgrid[0:600, 0:700].astype(np.float32)
    smooth = [x * 255 / 700, y * 255 / 600, 128 + 60 * np.sin(x / 20)]  # JPEG-friendly
    base = np.stack(smooth, axis=-1).round().astype(np.uint8)
    levels = [base, base[::2, ::2], base[::4, ::4]]
    asked = []

    def region(level, x, y, w, h):
        asked.append((level, x, y, w, h))
        return levels[level][y : y + h, x : x + w]

    path = tmp_path / "big.tiff"
    write_pyramid_tiff_tiles(path, (700, 600), region, 0.25, n_levels=3, tile=128, quality=95)
    # level 2 (175 x 150) is larger than one 128 px tile; edge tiles are cut to the image
    assert (0, 640, 512, 60, 88) in asked and max(a[0] for a in asked) == 2
    with openslide.OpenSlide(str(path)) as s:
        assert s.dimensions == (700, 600)
        assert s.level_dimensions == ((700, 600), (350, 300), (175, 150))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        for level in range(3):
            h, w = levels[level].shape[:2]
            got = np.asarray(s.read_region((0, 0), level, (w, h)).convert("RGB"), np.int16)
            assert np.abs(got - levels[level]).mean() < 3  # JPEG quality 95


def test_write_pyramid_tiff_tiles_checks_the_region(tmp_path):
    def gray(level, x, y, w, h):
        return np.zeros((h, w), np.uint8)

    with pytest.raises(ValueError, match=r"region\(level=0, x=0, y=0, w=64, h=64\) returned"):
        write_pyramid_tiff_tiles(tmp_path / "bad.tiff", (100, 100), gray, 0.5, tile=64)


PAGE_FAULTS = """
import json, resource
import numpy as np, torch
from histoatlas.runtime import keep_freed_memory

def work():  # like a forward pass: big tensors made and freed in turn
    x = torch.ones(2**23)  # 32 MiB
    for _ in range(4):
        x = x * 2 + 1
    return x

def page_faults():  # median of one round's page faults, after one round to warm up
    work()
    counts = []
    for _ in range(7):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        work()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(np.median(counts))

with keep_freed_memory(False) as off:
    pass
default = page_faults()
with keep_freed_memory() as tuned:
    kept = page_faults()
print(json.dumps({"off": off, "tuned": tuned, "default": default, "kept": kept,
                  "after": page_faults()}))
"""


def test_keep_freed_memory_reuses_big_blocks():
    """Measured in a fresh interpreter: late in a test session the heap is fragmented (other
    tests' libraries and arrays sit above it), so malloc may have to map memory apart
    whatever it is told, and the count would say more about the session than the tuning."""
    import json
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning is for glibc")
    out = subprocess.run(
        [sys.executable, "-c", PAGE_FAULTS], capture_output=True, text=True, check=True
    ).stdout
    faults = json.loads(out.strip().splitlines()[-1])
    assert faults["off"] is False and faults["tuned"] is True
    assert faults["default"] > 8_000  # glibc maps and unmaps 32 MiB tensors: 8,192 pages each
    assert faults["kept"] < faults["default"] / 10  # the freed blocks are reused
    assert faults["after"] > 8_000  # defaults are back
