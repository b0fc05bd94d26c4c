"""Merge a cohort's per-slide activation files into its dataset table."""

import logging

from histoatlas.analysis.dataset import merge_dataset
from histoatlas.io.sheet import read_sheet
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    with job_logging(smk):
        slides = merge_dataset(
            smk.input.h5,
            read_sheet(smk.input.sheet),
            tiles_path=smk.output.tiles,
            slides_path=smk.output.slides,
            features_path=smk.output.features,
        )
        logging.getLogger("histoatlas").info(
            f"merged {len(slides)} slides, {int(slides['n_tiles'].sum())} tiles"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
