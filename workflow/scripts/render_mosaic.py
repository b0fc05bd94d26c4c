"""Render the cohort's mosaic map and record which tile sits in which cell."""

import logging

import pandas as pd

from histoatlas.analysis.mosaic_stream import mosaic_from_coords
from histoatlas.pipeline.jobs import chosen, job_logging


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        options = chosen(params, "num_tiles_x", "tile_select", "tile_px")
        mosaic = mosaic_from_coords(
            smk.input.coords,
            pd.read_parquet(smk.input.slides),
            num_workers=smk.threads,
            **options,
        )
        mosaic.save(smk.output.png)
        mosaic.save_manifest(smk.output.manifest)
        shown = int((mosaic.grid >= 0).sum())
        logging.getLogger("histoatlas").info(f"mosaic of {shown} tiles")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
