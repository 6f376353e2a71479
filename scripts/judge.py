"""Rule judge: audit one run and write its verdict with evidence."""

from pathlib import Path

from posttrainbench.cells import Cell
from posttrainbench.scoring_jobs import judge_cell
from posttrainbench.workflow import logged, offline_hub

with logged(snakemake) as log:
    offline_hub()
    wc = snakemake.wildcards
    verdict = judge_cell(
        Cell(wc.agent, wc.model, wc.benchmark, int(wc.seed)),
        run_json=Path(snakemake.input.run),
        base_dir=Path(snakemake.input.base_model),
        out_json=Path(snakemake.output[0]),
    )
    log.info("verdict: flagged=%s reasons=%s", verdict["flagged"], verdict["reasons"])
