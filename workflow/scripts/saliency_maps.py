"""Compute saliency maps of the selected tiles: per-tile maps, a manifest, an overview."""

import sys

import pandas as pd

from histoatlas.models import load_model
from histoatlas.saliency import write_saliency_maps


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    model = load_model(smk.params.model, trust_model_code=smk.params.trust_model_code)
    print(f"model {smk.params.model} on {model.device}", file=sys.stderr)
    write_saliency_maps(
        pd.read_csv(smk.input.tiles),
        model,
        maps_dir=smk.output.maps,
        manifest=smk.output.manifest,
        overview_png=smk.output.overview,
        methods=smk.params.methods,
        method_params=smk.params.method_params,
        smooth=smk.params.smooth,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
