"""Rule stage_training_data: data the built-in recipes may train on (e.g. the GSM8K train split)."""

from pathlib import Path

from posttrainbench.benchmarks import stage_training_data
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    meta = stage_training_data(snakemake.wildcards.dataset, Path(snakemake.output[0]))
    log.info("staged %s", meta)
