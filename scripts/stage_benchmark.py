"""Rule stage_benchmark: the benchmark's test set as JSONL, with its checksum in meta.json."""

from pathlib import Path

from posttrainbench.benchmarks import stage_benchmark
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    meta = stage_benchmark(
        snakemake.wildcards.benchmark,
        Path(snakemake.output.test).parent,
        source=snakemake.params.staging.get("source"),
    )
    log.info("staged %s", meta)
