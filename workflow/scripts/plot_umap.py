"""Draw the cohort's UMAP coloured by one label (a sheet column or a built-in)."""

import sys
from pathlib import Path

import pandas as pd

from histoatlas.slidemap import SlideMap, apply_label


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    label = smk.wildcards.label
    if label == "cluster":  # k-means needs the activations
        from histoatlas.dataset import DatasetFeatures

        dataset = DatasetFeatures.from_dataset(Path(smk.input.tiles).parent)
        slide_map = SlideMap.load(smk.input.coords, dataset=dataset)
    else:
        slide_map = SlideMap.load(smk.input.coords, tiles=pd.read_parquet(smk.input.tiles))
    apply_label(slide_map, label, n_clusters=smk.params.n_clusters, seed=smk.params.seed)
    slide_map.save_plot(
        smk.output.png, title=f"{smk.wildcards.cohort}: UMAP of tiles coloured by {label}"
    )
    print(f"plotted {len(slide_map)} tiles by {label}", file=sys.stderr)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
