"""Fit UMAP on a cohort's activations, or project them onto a reference map.

With ``umap.reference`` set, nothing is fitted: the cohort is projected onto the
reference's map, and ``umap.joblib`` is a byte copy of the reference (a copy, not a
link: the cohort's results stay valid if the reference moves, and nothing done to this
output can reach the reference). The reference is only read.
"""

import logging

from histoatlas.analysis.dataset import DatasetFeatures
from histoatlas.analysis.slidemap import SlideMap
from histoatlas.pipeline.jobs import chosen, job_logging


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        dataset = DatasetFeatures.from_files(
            tiles=smk.input.tiles, slides=smk.input.slides, features=smk.input.features
        )
        if params.reference:
            slide_map = SlideMap.from_features(dataset, reference=params.reference)
        else:
            umap = ("n_neighbors", "min_dist", "metric", "max_tiles_per_slide", "pca_dim")
            slide_map = SlideMap.from_features(
                dataset, random_state=params.seed, **chosen(params, *umap)
            )
        slide_map.save_coords(smk.output.coords)
        slide_map.save_umap(smk.output.umap)
        logging.getLogger("histoatlas").info(
            f"mapped {len(slide_map)} tiles; {slide_map.umap.params}"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
