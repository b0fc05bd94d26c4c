"""Fit UMAP on a cohort's activations, or project them onto a reference map.

With ``umap.reference`` set, nothing is fitted: the cohort is projected onto the
reference's map, and ``umap.joblib`` is a byte copy of the reference (a copy, not a
link: the cohort's results stay valid if the reference moves, and nothing done to this
output can reach the reference). The reference is only read.
"""

import logging
import sys
from pathlib import Path

from histoatlas.dataset import DatasetFeatures
from histoatlas.slidemap import SlideMap


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    settings = {k: v for k, v in dict(smk.params.umap).items() if v is not None}
    reference = settings.pop("reference", None)
    settings["random_state"] = settings.pop("seed", 0)
    dataset = DatasetFeatures.from_dataset(Path(smk.input.tiles).parent)
    if reference:
        slide_map = SlideMap.from_features(dataset, reference=reference)
    else:
        slide_map = SlideMap.from_features(dataset, **settings)
    slide_map.save_coords(smk.output.coords)
    slide_map.save_umap(smk.output.umap)
    print(f"mapped {len(slide_map)} tiles; {slide_map.umap.params}", file=sys.stderr)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
