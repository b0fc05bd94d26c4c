"""Draw the cohort's UMAP coloured by one label (a sheet column or a built-in), rasterised."""

import logging

from histoatlas.analysis.map_stream import plot_label
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    label = smk.wildcards.label
    with job_logging(smk):
        drawn = plot_label(
            smk.input.coords,
            smk.input.tiles,
            smk.output.png,
            label,
            features_path=smk.input.features,
            n_clusters=smk.params.n_clusters or 8,
            seed=smk.params.seed,
            title=f"{smk.wildcards.cohort}: UMAP of tiles coloured by {label}",
        )
        logging.getLogger("histoatlas").info(f"plotted {drawn} tiles by {label}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
