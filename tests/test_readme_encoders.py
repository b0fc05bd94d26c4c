"""The README's foundation-model examples, run as they are written.

The blocks marked ``<!-- README example: NAME`` are read from README.md: the two-key
``params.json`` goes into ``models/uni/`` beside a UNI checkpoint in its published layout,
``slide.svs`` is OpenSlide's real CMU-1 H&E slide, and the Python block runs unchanged. A
full-size UNI (300 million parameters) would take minutes per slide on 2 cores, so the
checkpoint has 1 of UNI's 24 blocks and the preset's depth is patched to match (the one
thing changed); ``tests/test_encoders_layouts.py`` checks the full-size file's keys against
the unpatched preset.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from histoatlas.backends import load_model, read_params
from histoatlas.backends.torch.encoders import presets, presets_markdown
from tests.conftest import TESTDATA
from tests.encoder_cases import save_published, timm_reference
from tests.integration.cohort import ROOT

README = (ROOT / "README.md").read_text()
CMU = TESTDATA / "CMU-1-Small-Region.svs"


def example(name: str) -> str:
    """The fenced block that follows ``<!-- README example: name``."""
    found = re.search(rf"<!-- README example: {name}\b.*?-->\s*```\w*\n(.*?)```", README, re.S)
    assert found, f"README has no example {name!r}"
    return found.group(1)


@pytest.fixture
def uni_folder(tmp_path, monkeypatch):
    """``models/uni/`` as the README says, and ``slide.svs``, in a fresh working directory."""
    if not CMU.is_file():
        pytest.skip(f"{CMU} not found (shared/testdata)")
    uni = presets.PRESETS["uni"]
    monkeypatch.setitem(
        presets.PRESETS, "uni", dataclasses.replace(uni, kwargs={**uni.kwargs, "depth": 1})
    )
    folder = tmp_path / "models" / "uni"
    folder.mkdir(parents=True)
    ref = timm_reference("uni", 1)
    save_published(ref.published(), folder / "pytorch_model.bin")
    (folder / "params.json").write_text(example("uni-params"))
    (tmp_path / "slide.svs").symlink_to(CMU.resolve())
    monkeypatch.chdir(tmp_path)
    return folder, ref


def test_readme_python_example_runs_as_written(uni_folder):
    _, ref = uni_folder
    scope: dict = {}
    exec(compile(example("uni-python"), "README.md", "exec"), scope)
    grid, wsi, x, view = scope["grid"], scope["wsi"], scope["x"], scope["view"]
    assert grid.shape == (*wsi.grid_shape, 1024) and wsi.grid_shape == (8, 11)
    on_tissue = ~np.isnan(grid[..., 0])
    assert 20 < on_tissue.sum() < 88 and np.isfinite(grid[on_tissue]).all()
    assert x.shape == (1, 3, 224, 224) and view.shape == (224, 224, 3)
    assert view.dtype == np.uint8
    with torch.inference_mode():
        want = ref.embed(x).numpy()[0]
    if on_tissue[3, 5]:
        np.testing.assert_allclose(grid[3, 5], want, rtol=1e-4, atol=1e-4)


def test_readme_explicit_uni_params_equal_the_preset(uni_folder, tmp_path):
    """The README's UNI written out without the preset (depth 1 in both: the one change)
    reads the same file, tiles the same way and gives the same embedding."""
    folder, ref = uni_folder
    explicit = json.loads(example("uni-explicit"))
    explicit["architecture_kwargs"]["depth"] = 1
    other = tmp_path / "uni-explicit"
    other.mkdir()
    (other / "params.json").write_text(json.dumps(explicit))
    (other / "pytorch_model.bin").symlink_to(folder / "pytorch_model.bin")
    a, b = read_params(folder)[0], read_params(other)[0]
    for key in ("tile_px", "tile_um", "network_px", "resize_to", "mean", "std", "output"):
        assert getattr(a, key) == getattr(b, key), key
    tiles = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), np.uint8)
    preset_model, explicit_model = load_model(folder, device="cpu"), load_model(other, device="cpu")
    with torch.inference_mode():
        x = preset_model.to_tensor(tiles)
        torch.testing.assert_close(explicit_model.to_tensor(tiles), x)
        torch.testing.assert_close(explicit_model.model(x), preset_model.model(x))
        torch.testing.assert_close(preset_model.model(x), ref.embed(x))


def test_readme_preset_table_is_the_presets():
    assert presets_markdown() in README
