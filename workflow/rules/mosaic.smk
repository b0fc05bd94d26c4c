rule render_mosaic:
    input:
        coords=paths.UMAP_COORDS,
        slides=paths.DATASET["slides"],
    output:
        png=report(
            paths.MOSAIC_PNG,
            caption="../report/mosaic.rst",
            category="Mosaic map",
        ),
        manifest=paths.MOSAIC_MANIFEST,
    log:
        "logs/render_mosaic/{cohort}.log",
    benchmark:
        "logs/render_mosaic/{cohort}.benchmark.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 4
    params:
        num_tiles_x=lookup(dpath="mosaic/num_tiles_x", within=config),
        tile_select=lookup(dpath="mosaic/tile_select", within=config),
        tile_px=lookup(dpath="mosaic/tile_px", within=config),
    script:
        "../scripts/render_mosaic.py"
