"""Train the demo CNN (torch or Keras, per demo.backend) and save it as a model directory."""

import sys
from pathlib import Path

from histoatlas.demo.train import train_demo_model, training_inputs


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    demo, tiles = smk.params.demo, smk.params.tiles
    slides, labels, class_names = training_inputs(smk.input.sheet)
    train_demo_model(
        slides,
        labels,
        Path(smk.output.params).parent,
        class_names=class_names,
        tile_px=int(tiles["px"]),
        tile_um=tiles["um"],
        epochs=int(demo.get("epochs", 8)),
        seed=int(demo.get("seed", 0)),
        max_seconds=float(demo.get("train_seconds", 60)),
        num_threads=smk.threads,
        backend=demo.get("backend", "torch"),
        log=lambda line: print(line, file=sys.stderr),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
