"""Compute saliency maps of the selected tiles: per-tile maps, a manifest, an overview."""

import logging

import pandas as pd

from histoatlas.backends import load_model
from histoatlas.pipeline.jobs import job_logging
from histoatlas.saliency import write_saliency_maps


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        model = load_model(params.model, trust_model_code=params.trust_model_code)
        logging.getLogger("histoatlas").info(f"model {params.model} on {model.device}")
        write_saliency_maps(
            pd.read_csv(smk.input.tiles),
            model,
            maps_dir=smk.output.maps,
            manifest=smk.output.manifest,
            overview_png=smk.output.overview,
            methods=params.methods,
            method_params=params.method_params,
            smooth=params.smooth,
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
