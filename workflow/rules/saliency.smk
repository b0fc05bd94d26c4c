rule select_saliency_tiles:
    input:
        tiles=paths.DATASET["tiles"],
        slides=paths.DATASET["slides"],
    output:
        csv=paths.SALIENCY_TILES,
    log:
        "logs/select_saliency_tiles/{cohort}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        tiles=lookup(dpath="saliency/tiles", within=config),
    script:
        "../scripts/select_saliency_tiles.py"


rule saliency_maps:
    input:
        tiles=rules.select_saliency_tiles.output.csv,
        model=MODEL_FILES,
    output:
        maps=directory(paths.SALIENCY_MAPS),
        manifest=paths.SALIENCY_MANIFEST,
        overview=report(
            paths.SALIENCY_OVERVIEW,
            caption="../report/saliency.rst",
            category="Saliency",
        ),
    log:
        "logs/saliency_maps/{cohort}.log",
    benchmark:
        "logs/saliency_maps/{cohort}.benchmark.tsv"
    conda:
        MODEL_ENV
    resources:
        gpu=1,
    params:
        model=model_param,
        trust_model_code=lookup(dpath="trust_model_code", within=config),
        methods=lookup(dpath="saliency/methods", within=config),
        method_params=saliency_method_params(),
        smooth=lookup(dpath="saliency/smooth", within=config),
    script:
        "../scripts/saliency_maps.py"
