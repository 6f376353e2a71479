"""Rule evaluate: score a cell's checkpoint; any failure becomes a recorded "failed" eval."""

from pathlib import Path

from posttrainbench.cells import Cell
from posttrainbench.scoring_jobs import evaluate_cell
from posttrainbench.workflow import logged, offline_hub

with logged(snakemake) as log:
    offline_hub()
    wc = snakemake.wildcards
    record = evaluate_cell(
        Cell(wc.agent, wc.model, wc.benchmark, int(wc.seed)),
        run_json=Path(snakemake.input.run),
        benchmark_dir=Path(snakemake.input.test).parent,
        options=snakemake.params.evaluation,
        out_json=Path(snakemake.output[0]),
        threads=snakemake.threads,
        grade=snakemake.params.grade,
        **snakemake.params.prompting,
    )
    log.info("eval %s: status=%s score=%s", record["benchmark"], record["status"], record["score"])
