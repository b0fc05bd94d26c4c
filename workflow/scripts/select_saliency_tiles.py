"""Pick the tiles whose saliency maps the cohort gets (saliency.tiles) into tiles.csv."""

import logging

from histoatlas.pipeline.jobs import job_logging
from histoatlas.saliency.select import select_tiles_to_csv


def main(smk) -> None:
    with job_logging(smk):
        selected = select_tiles_to_csv(
            smk.input.tiles, smk.input.slides, smk.params.tiles, smk.output.csv
        )
        logging.getLogger("histoatlas").info(
            f"selected {len(selected)} tile(s) from {selected['slide'].nunique()} slide(s) "
            f"for class(es) {sorted(set(selected['class_name']))}"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
