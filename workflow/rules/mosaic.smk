rule render_mosaic:
    input:
        coords="results/{cohort}/umap/coords.parquet",
        slides="results/{cohort}/dataset/slides.parquet",
    output:
        png=report(
            "results/{cohort}/mosaic/mosaic.png",
            caption="../report/mosaic.rst",
            category="Mosaic map",
        ),
        manifest="results/{cohort}/mosaic/mosaic.parquet",
    log:
        "logs/render_mosaic/{cohort}.log",
    benchmark:
        "logs/render_mosaic/{cohort}.benchmark.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 4
    params:
        mosaic=lookup(dpath="mosaic", within=config),
    script:
        "../scripts/render_mosaic.py"
