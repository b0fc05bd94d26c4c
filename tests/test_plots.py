"""UMAP plots: palettes and legends, colour bars, subsampling, fixed size, plot_umap.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from histoatlas.analysis.map_stream import cluster_ids, plot_label
from histoatlas.analysis.plotting import MISSING_LABEL, is_categorical, plot_umap, umap_figure
from histoatlas.analysis.slidemap import SlideMap
from histoatlas.errors import HistoatlasError
from tests.plot_pixels import palette_pixels

REPO = Path(__file__).resolve().parents[1]


def legend_texts(fig) -> list[str]:
    legend = fig.axes[0].get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def points_drawn(fig) -> int:
    return sum(len(c.get_offsets()) for c in fig.axes[0].collections)


@pytest.fixture
def layout():
    rng = np.random.default_rng(0)
    return rng.random((500, 2)), rng


def test_categorical_legend_lists_exactly_the_label_values(layout, tmp_path):
    coords, rng = layout
    labels = rng.choice(["tumor", "stroma", "necrosis"], size=500)
    sm = SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=pd.DataFrame({"subtype": labels}))
    sm.label("subtype")
    fig = umap_figure(sm.coords, sm.data["label"], label_name="subtype")
    assert legend_texts(fig) == ["necrosis", "stroma", "tumor"]
    assert fig.axes[0].get_legend().get_title().get_text() == "subtype"
    # the legend sits beside the map, inside the picture
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig.axes[0].get_legend().get_window_extent(renderer)
    assert box.x0 > fig.axes[0].get_window_extent(renderer).x1 and box.x1 < 1000
    assert not fig.axes[0].child_axes  # no colour bar
    assert points_drawn(fig) == 500
    # each category has its own colour
    colours = fig.axes[0].collections[0].get_facecolors()
    assert len({tuple(c) for c in colours}) == 3
    title = fig.axes[0].get_title()
    assert "UMAP coloured by subtype" in title and "500 points" in title
    assert fig.axes[0].get_xlabel() == "UMAP 1" and fig.axes[0].get_ylabel() == "UMAP 2"

    sm.save_plot(tmp_path / "umap_subtype.png")
    with Image.open(tmp_path / "umap_subtype.png") as im:
        assert im.size == (1000, 800)
    sm.save_plot(tmp_path / "small.png", figsize=(4, 3), dpi=50)
    with Image.open(tmp_path / "small.png") as im:
        assert im.size == (200, 150)


def test_integer_clusters_are_categories_in_numeric_order(layout):
    coords, rng = layout
    clusters = rng.integers(0, 12, size=500)
    fig = umap_figure(coords, clusters, label_name="cluster")
    assert legend_texts(fig) == [str(k) for k in range(12)]


def test_missing_labels_are_grey_and_named_in_the_legend(layout):
    coords, rng = layout
    labels = pd.Series(rng.choice(["a", "b"], size=500), dtype=object)
    labels[:50] = None
    fig = umap_figure(coords, labels, label_name="grade")
    assert legend_texts(fig) == ["a", "b", MISSING_LABEL]
    assert points_drawn(fig) == 500


def test_continuous_label_gets_a_colour_bar(layout):
    coords, rng = layout
    values = rng.random(500)
    fig = umap_figure(coords, values, label_name="p(tumor)")
    assert fig.axes[0].get_legend() is None
    (cbar,) = fig.axes[0].child_axes  # the colour bar, beside the square map
    assert cbar.get_ylabel() == "p(tumor)"
    assert cbar.get_position().x0 > fig.axes[0].get_position().x1
    scatter = fig.axes[0].collections[0]
    assert scatter.get_clim() == (values.min(), values.max())


def test_large_cohort_is_subsampled_with_small_translucent_markers():
    rng = np.random.default_rng(1)
    coords = rng.random((300_000, 2))
    labels = rng.choice(["x", "y"], size=300_000)
    fig = umap_figure(coords, labels, max_points=20_000, label_name="slide")
    assert points_drawn(fig) == 20_000
    scatter = fig.axes[0].collections[0]
    assert scatter.get_alpha() < 0.5 and scatter.get_sizes()[0] < 5
    assert "20,000 of 300,000 points drawn" in fig.axes[0].get_title()


def test_too_many_categories_drop_the_legend_and_say_so(layout):
    coords, _ = layout
    labels = [f"slide{k:03d}" for k in range(100)] * 5
    fig = umap_figure(coords, labels, label_name="slide")
    assert fig.axes[0].get_legend() is None
    assert "100 values" in fig.axes[0].texts[0].get_text()


def test_reruns_give_the_same_picture(layout, tmp_path):
    coords, rng = layout
    labels = rng.choice(["a", "b", "c"], size=500)
    for name in ("one.png", "two.png"):
        sm = SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=pd.DataFrame({"t": labels}))
        sm.label("t").save_plot(tmp_path / name, max_points=300, seed=3)
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()


def test_is_categorical_rules():
    assert is_categorical(["a", "b"])
    assert is_categorical(np.array([True, False]))
    assert is_categorical(np.arange(20))
    assert not is_categorical(np.arange(21))
    assert not is_categorical(np.array([0.5, 1.0]))


def test_plot_umap_checks_shapes():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_umap(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2 labels for 3 points"):
        plot_umap(np.zeros((3, 2)), ["a", "b"])


# -- entry script ----------------------------------------------------------------------


@pytest.fixture
def cohort_dirs(tmp_path):
    """coords.parquet (precomputed layout) and a dataset folder with labels and predictions."""
    rng = np.random.default_rng(2)
    n = 240
    tiles = pd.DataFrame(
        {
            "slide": np.repeat(["s1", "s2", "s3"], n // 3),
            "tile": np.tile(np.arange(n // 3), 3),
            "x": rng.integers(0, 10_000, n),
            "y": rng.integers(0, 10_000, n),
        }
    )
    tiles["subtype"] = tiles["slide"].map({"s1": "luad", "s2": "lusc", "s3": "luad"})
    preds = rng.dirichlet([1, 1], size=n)
    tiles["pred_tumor"], tiles["pred_normal"] = preds[:, 0], preds[:, 1]
    tiles["pred_label"] = np.where(preds[:, 0] > 0.5, "tumor", "normal")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    tiles.to_parquet(dataset / "tiles.parquet", index=False)
    tiles.groupby("slide", as_index=False).size().to_parquet(dataset / "slides.parquet")
    features = np.concatenate([rng.normal(k * 3, 1, size=(n // 3, 8)) for k in range(3)])
    with h5py.File(dataset / "features.h5", "w") as f:
        f["features"] = features.astype(np.float32)
        f.attrs["class_names"] = json.dumps(["tumor", "normal"])
    coords = rng.random((n, 2))
    umap = tmp_path / "umap"
    SlideMap.from_xy(coords[:, 0], coords[:, 1], tiles=tiles).save_coords(umap / "coords.parquet")
    return dataset, umap


def run_plot(label, dataset, umap, out, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "script_plot_umap", REPO / "workflow" / "scripts" / "plot_umap.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    smk = SimpleNamespace(
        input=SimpleNamespace(
            coords=str(umap / "coords.parquet"),
            tiles=str(dataset / "tiles.parquet"),
            slides=str(dataset / "slides.parquet"),
            features=str(dataset / "features.h5"),
        ),
        output=SimpleNamespace(png=str(out / f"umap_{label}.png")),
        params=SimpleNamespace(n_clusters=3, seed=0),
        wildcards=SimpleNamespace(cohort="demo", label=label),
        log=[str(out / f"plot_umap_{label}.log")],
    )
    module.main(smk)
    return Path(smk.output.png)


@pytest.mark.parametrize("label", ["subtype", "slide", "prediction", "uncertainty", "cluster"])
def test_plot_umap_script_writes_one_png_per_label(label, cohort_dirs, tmp_path, monkeypatch):
    dataset, umap = cohort_dirs
    png = run_plot(label, dataset, umap, tmp_path, monkeypatch)
    with Image.open(png) as im:
        assert im.size == (1000, 800)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something was drawn
    assert f"by {label}" in (tmp_path / f"plot_umap_{label}.log").read_text()


def test_plot_umap_script_names_a_missing_label(cohort_dirs, tmp_path, monkeypatch):
    dataset, umap = cohort_dirs
    with pytest.raises(HistoatlasError, match="no column 'grade'"):
        run_plot("grade", dataset, umap, tmp_path, monkeypatch)
    assert not (tmp_path / "umap_grade.png").exists()


# -- streamed, rasterised plots of the workflow -------------------------------------------


@pytest.mark.parametrize("label", ["subtype", "slide", "prediction", "cluster"])
def test_streamed_plot_draws_each_category_in_its_colour(label, cohort_dirs, tmp_path):
    dataset, umap = cohort_dirs
    png = tmp_path / f"{label}.png"
    args = (umap / "coords.parquet", dataset / "tiles.parquet", png, label)
    drawn = plot_label(*args, features_path=dataset / "features.h5", n_clusters=3)
    assert drawn == 240
    with Image.open(png) as im:
        assert im.size == (1000, 800)
    n_values = {"subtype": 2, "slide": 3, "prediction": 2, "cluster": 3}[label]
    counts = palette_pixels(png, n_values)
    assert all(c > 50 for c in counts[:n_values]) and counts[n_values] == 0, counts
    # the same picture whatever the batches the tables are read in
    again = tmp_path / f"{label}-batches.png"
    plot_label(
        *args[:2], again, label, features_path=dataset / "features.h5", n_clusters=3, batch_rows=7
    )
    assert again.read_bytes() == png.read_bytes()


def test_streamed_clusters_equal_the_map_s_kmeans(cohort_dirs):
    dataset, umap = cohort_dirs
    tiles = pd.read_parquet(dataset / "tiles.parquet")
    with h5py.File(dataset / "features.h5") as f:
        features = f["features"][()]
    sm = SlideMap.from_xy(*np.random.default_rng(0).random((2, len(tiles))), tiles=tiles)
    sm._activations = features
    np.testing.assert_array_equal(
        cluster_ids(dataset / "features.h5", 3, seed=0, batch_rows=50), sm.cluster(3, seed=0)
    )


def test_streamed_plot_of_many_points_rasterises_them_all(tmp_path):
    rng = np.random.default_rng(5)
    n = 300_000
    tiles = pd.DataFrame(
        {"slide": np.repeat(["a", "b"], n // 2), "tile": np.tile(np.arange(n // 2), 2)}
    )
    tiles["x"] = tiles["y"] = 0
    tiles.to_parquet(tmp_path / "tiles.parquet", index=False)
    centres = np.where(tiles["slide"].to_numpy()[:, None] == "a", 0.3, 0.7)
    xy = np.clip(centres + rng.normal(0, 0.1, (n, 2)), 0, 1)
    SlideMap.from_xy(xy[:, 0], xy[:, 1], tiles=tiles).save_coords(tmp_path / "coords.parquet")
    png = tmp_path / "slide.png"
    drawn = plot_label(
        tmp_path / "coords.parquet", tmp_path / "tiles.parquet", png, "slide", batch_rows=70_000
    )
    assert drawn == n
    picture = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3) / 255
    assert picture.shape == (800 * 1000, 3)
    # where many points overlap, a slide's colour shows at least half opaque over white,
    # as translucent markers stack up (each of the 300,000 points weighs alpha = 0.15)
    from histoatlas.analysis.plotting import qualitative_colours

    for colour in qualitative_colours(2):
        towards = np.asarray(colour[:3]) - 1
        opacity = (picture - 1) @ towards / (towards @ towards)
        along = np.abs(picture - 1 - opacity[:, None] * towards).max(axis=1) < 0.02
        assert (along & (opacity > 0.5)).sum() > 2_000


def test_streamed_plot_names_a_missing_label(cohort_dirs, tmp_path):
    dataset, umap = cohort_dirs
    with pytest.raises(HistoatlasError, match="no column 'grade' to label the map by"):
        plot_label(umap / "coords.parquet", dataset / "tiles.parquet", tmp_path / "g.png", "grade")
    assert not (tmp_path / "g.png").exists()
