"""Rule evaluate: score a cell's checkpoint; any failure becomes a recorded "failed" eval."""

from pathlib import Path

from posttrainbench.cells import Cell
from posttrainbench.scoring_jobs import evaluate_cell
from posttrainbench.workflow import confined_job, offline_hub

# No API key and a read-only project tree: the checkpoint being scored is the agent's.
with confined_job(snakemake) as log:
    offline_hub()
    wc = snakemake.wildcards
    record = evaluate_cell(
        Cell(wc.agent, wc.model, wc.benchmark, int(wc.seed)),
        run_json=Path(snakemake.input.run),
        benchmark_dir=Path(snakemake.input.test).parent,
        base_dir=Path(snakemake.input.base),
        options=snakemake.params.evaluation,
        out_json=Path(snakemake.output[0]),
        threads=snakemake.threads,
        grade=snakemake.params.grade,
        sandbox=snakemake.params.sandbox,
        templates_dir=Path(snakemake.input.templates).parent if "templates" in snakemake.input.keys() else None,
        **snakemake.params.prompting,
    )
    log.info("eval %s: status=%s score=%s", record["benchmark"], record["status"], record["score"])
