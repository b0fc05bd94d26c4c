"""Gather the shards' layouts: frame them in [0, 1] and write coords.parquet and umap.joblib.

With ``umap.reference`` set, the reference's frame is kept and ``umap.joblib`` is a byte
copy of the reference (a copy, not a link: the cohort's results stay valid if the
reference moves, and nothing done to this output can reach the reference).
"""

import logging

from histoatlas.analysis.umap_cohort import gather_layout
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    with job_logging(smk):
        fitted = gather_layout(
            smk.input.shards,
            model_path=smk.input.model,
            umap_path=smk.output.umap,
            coords_path=smk.output.coords,
            reference=bool(smk.params.reference),
        )
        logging.getLogger("histoatlas").info(
            f"mapped {len(smk.input.shards)} shard(s); {fitted.params}"
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
