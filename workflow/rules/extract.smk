rule extract_activations:
    input:
        slide=slide_path,
        model=model_files,
    output:
        h5="results/features/{featureset}/{slide}.h5",
    log:
        "logs/extract_activations/{featureset}/{slide}.log",
    benchmark:
        "logs/extract_activations/{featureset}/{slide}.benchmark.tsv"
    conda:
        model_env
    threads: 4
    resources:
        gpu=1,
    params:
        model=lookup(dpath="model", within=config),
        trust_model_code=lookup(dpath="trust_model_code", within=config),
        tiles=lookup(dpath="tiles", within=config),
        features=lookup(dpath="features", within=config),
        mpp=slide_mpp,
    script:
        "../scripts/extract_activations.py"
