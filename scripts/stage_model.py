"""Rule stage_model: materialise a base or instruct model as a safetensors folder."""

from pathlib import Path

from posttrainbench.models import stage_model
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    meta = stage_model(snakemake.params.source, Path(snakemake.output[0]))
    log.info("staged %s: %s", snakemake.params.source, meta)
