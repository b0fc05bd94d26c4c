"""Render the cohort's mosaic map and record which tile sits in which cell."""

import sys

import pandas as pd

from histoatlas.slidemap import SlideMap


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    slide_map = SlideMap.load(smk.input.coords, slides=pd.read_parquet(smk.input.slides))
    mosaic = slide_map.generate_mosaic(**dict(smk.params.mosaic), num_workers=smk.threads)
    mosaic.save(smk.output.png)
    mosaic.save_manifest(smk.output.manifest)
    print(f"mosaic of {int((mosaic.grid >= 0).sum())} tiles", file=sys.stderr)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
