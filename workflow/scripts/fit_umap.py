"""Fit UMAP on the cohort's seeded sample, read straight from the per-slide files.

Writes the model (its [0, 1] frame is set by gather_umap, once every tile is placed) and
the sample's layout; project_umap places the other tiles.
"""

import logging

from histoatlas.analysis.umap_cohort import fit_cohort
from histoatlas.pipeline.jobs import chosen, job_logging


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        umap = ("n_neighbors", "min_dist", "metric", "max_tiles_per_slide", "max_fit_tiles")
        fitted = fit_cohort(
            smk.input.features,
            model_path=smk.output.model,
            sample_path=smk.output.sample,
            pca_dim=params.pca_dim,
            random_state=params.seed,
            **chosen(params, *umap),
        )
        logging.getLogger("histoatlas").info(
            f"fitted on {fitted.params['n_fit']} tiles; {fitted.umap.get_params()}"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
