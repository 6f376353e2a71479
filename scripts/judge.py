"""Rule judge: audit an agent's runs on one base model and seed, one verdict (with evidence) per benchmark."""

from pathlib import Path

from posttrainbench.cells import Cell
from posttrainbench.judge import judge_run, read_reference_manifest
from posttrainbench.workflow import confined_job, offline_hub

# The LLM judge's key (and proxy settings) only when one is configured, a read-only project tree.
llm = snakemake.params.settings.get("llm") or {}
with confined_job(snakemake, keys=[llm.get("api_key_env") if llm.get("endpoint") else None],
                  network=bool(llm.get("endpoint"))) as log:
    offline_hub()
    wc = snakemake.wildcards
    instruct = snakemake.input.get("instruct_model")
    test_sets, allowed_data = read_reference_manifest(Path(snakemake.input.reference_data))
    # Runs and verdicts both follow the config's benchmark order.
    for run_json, out_json in zip(snakemake.input.runs, snakemake.output, strict=True):
        cell = Cell(wc.agent, wc.model, Path(run_json).parent.parent.name, int(wc.seed))
        verdict = judge_run(
            cell,
            run_json=Path(run_json),
            base_dir=Path(snakemake.input.base_model),
            instruct_dir=Path(instruct) if instruct else None,
            test_sets=test_sets,
            allowed_data=allowed_data,
            settings=snakemake.params.settings,
            agent_spec={"base_url": snakemake.params.agent_base_url},
            out_json=Path(out_json),
        )
        log.info("%s: flagged=%s reasons=%s", cell.key, verdict["flagged"], verdict["reasons"])
