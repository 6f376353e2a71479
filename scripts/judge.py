"""Rule judge: audit one run and write its verdict with evidence."""

from pathlib import Path

from posttrainbench.cells import Cell
from posttrainbench.judge import judge_run, read_reference_manifest
from posttrainbench.workflow import logged, offline_hub

with logged(snakemake) as log:
    offline_hub()
    wc = snakemake.wildcards
    inputs = dict(snakemake.input.items())
    test_sets, allowed_data = read_reference_manifest(Path(inputs["reference_data"]))
    verdict = judge_run(
        Cell(wc.agent, wc.model, wc.benchmark, int(wc.seed)),
        run_json=Path(inputs["run"]),
        base_dir=Path(inputs["base_model"]),
        instruct_dir=Path(inputs["instruct_model"]) if "instruct_model" in inputs else None,
        test_sets=test_sets,
        allowed_data=allowed_data,
        settings=snakemake.params.settings,
        agent_spec={"base_url": snakemake.params.agent_base_url},
        out_json=Path(snakemake.output[0]),
    )
    log.info("verdict: flagged=%s reasons=%s", verdict["flagged"], verdict["reasons"])
