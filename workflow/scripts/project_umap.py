"""Place the tiles of one shard of slides on the map: fitted tiles where the fit put them,
the others projected onto the fitted (or the reference) map."""

import logging

from histoatlas.analysis.umap_cohort import project_shard
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    with job_logging(smk):
        placed = project_shard(
            smk.input.h5,
            smk.params.slides,
            model_path=smk.input.model,
            sample_path=smk.input.sample or None,
            out_path=smk.output.shard,
        )
        logging.getLogger("histoatlas").info(
            f"shard {smk.wildcards.shard}: {placed} tiles of {len(smk.params.slides)} slides"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
