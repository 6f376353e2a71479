"""Rule judge_reference_data: the manifest of test sets and allowed data every judge job scans against."""

from pathlib import Path

from posttrainbench.judge import write_reference_manifest
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    manifest = write_reference_manifest(dict(snakemake.input.items()), Path(snakemake.output[0]))
    log.info("test sets: %s; allowed data: %s", ", ".join(manifest["test_sets"]), ", ".join(manifest["allowed_data"]))
