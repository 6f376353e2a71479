"""Rule grade: score a graded benchmark's generations with the LLM grader; a failure is recorded."""

from pathlib import Path

from posttrainbench.graders import grader_key_env
from posttrainbench.scoring_jobs import grade_cell
from posttrainbench.workflow import confined_job

# The grader's key (and proxy settings) only, a read-only project tree: the generations are the agent model's.
with confined_job(snakemake, keys=[grader_key_env(snakemake.params.evaluation)], network=True) as log:
    record = grade_cell(
        Path(snakemake.input.generated),
        benchmark_dir=Path(snakemake.input.test).parent,
        options=snakemake.params.evaluation,
        out_json=Path(snakemake.output[0]),
    )
    log.info("graded %s: status=%s score=%s", record["benchmark"], record["status"], record["score"])
