"""Config schema: defaults, coercion of --config strings, and rejection of bad values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from histoatlas.pipeline.config import coerce_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def validated(config):
    config = coerce_config(config, SCHEMA)
    validate(config, str(SCHEMA_PATH))
    return config


def test_shipped_config_is_valid_and_complete():
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    config = validated(dict(shipped))
    for section in ("tiles", "features", "umap", "plots", "mosaic", "saliency", "atlas", "demo"):
        documented = set(SCHEMA["properties"][section]["properties"])
        assert set(config[section]) == documented, section


def test_defaults_fill_an_empty_config():
    config = validated({})
    assert config["tiles"]["px"] is None and config["tiles"]["um"] is None  # the model's
    assert config["umap"]["n_neighbors"] == 50
    assert config["umap"]["metric"] == "cosine"
    assert config["mosaic"]["num_tiles_x"] == 50
    assert config["features"]["layers"] == ["postconv"]


def test_nested_command_line_strings_are_coerced():
    # What `snakemake --config "umap={n_neighbors: 15}" tiles=...` hands over.
    config = validated(
        {
            "umap": {"n_neighbors": "15", "min_dist": "0.2", "pca_dim": "null"},
            "tiles": {"um": "20x", "otsu": "false", "px": "256"},
            "features": {"layers": ["block3", "postconv"]},
        }
    )
    assert config["umap"]["n_neighbors"] == 15 and config["umap"]["min_dist"] == 0.2
    assert config["umap"]["pca_dim"] is None
    assert config["tiles"]["um"] == "20x" and config["tiles"]["otsu"] is False
    assert config["tiles"]["px"] == 256


def test_atlas_settings_from_the_command_line_are_coerced():
    # `snakemake --config "atlas={tile_px: 128, labels: [subtype, slide]}"`
    config = validated({"atlas": {"tile_px": "128", "labels": "[subtype, slide]"}})
    assert config["atlas"]["tile_px"] == 128
    assert config["atlas"]["labels"] == ["subtype", "slide"]
    assert config["atlas"]["max_points"] == 1_000_000 and validated({})["atlas"]["labels"] is None


def test_numeric_tile_um_given_as_string_becomes_number():
    assert validated({"tiles": {"um": "112"}})["tiles"]["um"] == 112


@pytest.mark.parametrize(
    ("config", "culprit"),
    [
        ({"tiles": {"px": "many"}}, "px"),
        ({"tiles": {"px": 2}}, "px"),
        ({"umap": {"n_neighbors": 1}}, "n_neighbors"),
        ({"features": {"pooling": "mean"}}, "pooling"),
        ({"tiles": {"um": "20y"}}, "um"),
        ({"mosaic": {"tile_select": "random"}}, "tile_select"),
        ({"tiles": {"reader": "pillow"}}, "reader"),
        ({"cohort": "../x"}, "cohort"),
        ({"umap": {"n_neighbours": 15}}, "n_neighbours"),
    ],
)
def test_bad_values_are_refused_naming_the_key(config, culprit):
    with pytest.raises(WorkflowError, match=culprit):
        validated(config)


def test_featureset_name_derives_from_model_and_tiling():
    from histoatlas.pipeline.config import featureset_name, model_label, model_tiling

    def validated(config, model_px=224, model_um=112):  # the tiling resolved as common.smk does
        config = globals()["validated"](config)
        tiles = model_tiling(config["tiles"], model_px, model_um, model="m", source="p.json")
        return {**config, "tiles": tiles}

    assert featureset_name(validated({}), SCHEMA) == "demo-224px-112um"
    uni = {"model": "/models/uni", "tiles": {"px": 224, "um": "20x"}}
    assert featureset_name(validated(uni), SCHEMA) == "uni-224px-20x"
    # the UNI preset's own tiling, when the config leaves it to the model
    preset = validated({"model": "/models/uni"}, 256, "20x")
    assert featureset_name(preset, SCHEMA) == "uni-256px-20x"
    assert model_label("/models/uni/pytorch_model.bin") == "uni"
    assert model_label("/models/mitosis/deep_histopath_model.hdf5") == "deep_histopath_model"
    # any other setting that changes the activations gives a name of its own, stably
    base = featureset_name(validated(uni), SCHEMA)
    names = {
        featureset_name(validated({**uni, "features": features}), SCHEMA)
        for features in (
            {"layers": ["layer3"]},
            {"layers": ["layer4"]},
            {"pooling": "max"},
            {"precision": "bfloat16"},
        )
    }
    assert len(names) == 4 and all(re.fullmatch(rf"{base}-[0-9a-f]{{6}}", n) for n in names)
    again = featureset_name(validated({**uni, "features": {"layers": ["layer3"]}}), SCHEMA)
    assert again in names
    # settings that change no activation keep the name; a given name is taken as it is
    same = validated({**uni, "tiles": {"px": 224, "um": "20x", "allow_model_mismatch": True}})
    assert featureset_name(same, SCHEMA) == base
    for reader in ("openslide", "fast"):  # who decodes: the same pixels
        same = validated({**uni, "tiles": {"um": "20x", "reader": reader}})
        assert featureset_name(same, SCHEMA) == base
    assert featureset_name(validated({"features": {"name": "uni-v1"}}), SCHEMA) == "uni-v1"
