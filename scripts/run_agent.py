"""Rule run_agent: run one cell's agent in its sandbox under its budget; write run.json + trace.jsonl."""

from pathlib import Path

from posttrainbench.agents.runner import run_cell
from posttrainbench.agents.sandbox import InfrastructureError
from posttrainbench.cells import Cell
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    wc = snakemake.wildcards
    cell = Cell(wc.agent, wc.model, wc.benchmark, int(wc.seed))
    optional = lambda name: Path(snakemake.input[name]) if name in snakemake.input.keys() else None
    benchmark_test = optional("benchmark_test")
    try:
        record = run_cell(
            cell,
            snakemake.params.spec,
            run_dir=Path(snakemake.output.run).parent,
            base_dir=Path(snakemake.input.base_model),
            instruct_dir=optional("instruct_model"),
            train_data=optional("train_data"),
            benchmark_dir=benchmark_test.parent if benchmark_test else None,
            budget=snakemake.params.budget,
            sandbox_config=snakemake.params.sandbox,
            threads=snakemake.threads,
            config=snakemake.config,
        )
    except InfrastructureError as exc:
        # Not the agent's outcome: no run.json, a failed job that Snakemake retries.
        log.error("%s: infrastructure failure, no run record written: %s", cell.key, exc)
        raise SystemExit(1) from None
    log.info("%s: %s in %.0f s (sandbox %s, network %s)", cell.key, record["status"], record["wall_seconds"],
             record["sandbox"], record["network"])
