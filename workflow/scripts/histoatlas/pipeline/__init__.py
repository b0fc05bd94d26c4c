"""What the Snakemake workflow needs beside the library: config coercion and checks, the
featureset name, output paths shared by rules and the qc table, the qc table itself, and the
rule scripts' log set-up. The top layer: it may use every other."""
