"""Draw the cohort's UMAP coloured by one label (a sheet column or a built-in)."""

import logging

import pandas as pd

from histoatlas.analysis.dataset import DatasetFeatures
from histoatlas.analysis.slidemap import SlideMap, apply_label
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    label = smk.wildcards.label
    with job_logging(smk):
        if label == "cluster":  # k-means needs the activations
            dataset = DatasetFeatures.from_files(
                tiles=smk.input.tiles, slides=smk.input.slides, features=smk.input.features
            )
            slide_map = SlideMap.load(smk.input.coords, dataset=dataset)
        else:
            slide_map = SlideMap.load(smk.input.coords, tiles=pd.read_parquet(smk.input.tiles))
        apply_label(slide_map, label, n_clusters=smk.params.n_clusters, seed=smk.params.seed)
        slide_map.save_plot(
            smk.output.png, title=f"{smk.wildcards.cohort}: UMAP of tiles coloured by {label}"
        )
        logging.getLogger("histoatlas").info(f"plotted {len(slide_map)} tiles by {label}")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
