"""Merge a cohort's per-slide activation files into its dataset table."""

import sys

from histoatlas.dataset import merge_dataset
from histoatlas.sheet import read_sheet


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    tiles, slides = merge_dataset(
        smk.input.h5,
        read_sheet(smk.input.sheet),
        tiles_path=smk.output.tiles,
        slides_path=smk.output.slides,
        features_path=smk.output.features,
    )
    print(f"merged {len(slides)} slides, {len(tiles)} tiles", file=sys.stderr)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
