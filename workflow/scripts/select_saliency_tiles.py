"""Pick the tiles whose saliency maps the cohort gets (saliency.tiles) into tiles.csv."""

import sys

from histoatlas.saliency.select import select_tiles_to_csv


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    selected = select_tiles_to_csv(
        smk.input.tiles, smk.input.slides, smk.params.tiles, smk.output.csv
    )
    print(
        f"selected {len(selected)} tile(s) from {selected['slide'].nunique()} slide(s) "
        f"for class(es) {sorted(set(selected['class_name']))}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
