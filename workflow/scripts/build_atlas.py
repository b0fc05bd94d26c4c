"""Build the cohort's interactive atlas: results/{cohort}/atlas/index.html and its files."""

import logging

from histoatlas.atlas import AtlasSettings
from histoatlas.atlas.cohort import CohortFiles, build_cohort_atlas
from histoatlas.pipeline.jobs import chosen, job_logging

SETTINGS = ("tile_px", "max_points", "thumbnail_px", "max_thumbnails", "jpeg_quality", "seed")


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        summary = build_cohort_atlas(
            smk.output.atlas,
            CohortFiles.from_mapping(smk.input.items()),
            **chosen(params, "labels", "mosaic_cols", "n_clusters"),
            settings=AtlasSettings(**chosen(params, *SETTINGS)),
            cohort=smk.wildcards.cohort,
            num_workers=smk.threads,
        )
        logging.getLogger("histoatlas").info(
            f"atlas of {summary['n_drawn']} of {summary['n_points']} tiles"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
