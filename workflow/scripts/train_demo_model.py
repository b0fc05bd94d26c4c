"""Train the demo CNN (torch or Keras, per demo.backend) and save it as a model directory."""

from pathlib import Path

from histoatlas.demo.data import training_inputs
from histoatlas.demo.train import TrainOptions, train_demo_model
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        slides, labels, class_names = training_inputs(smk.input.sheet)
        train_demo_model(
            slides,
            labels,
            Path(smk.output.params).parent,
            class_names=class_names,
            tile_px=int(params.tile_px),
            tile_um=params.tile_um,
            options=TrainOptions(
                epochs=int(params.epochs),
                seed=int(params.seed),
                max_seconds=float(params.train_seconds),
                num_threads=smk.threads,
                backend=params.backend,
            ),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
