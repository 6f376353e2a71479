# PostTrainBench: for every cell (agent x base model x benchmark x seed) an agent post-trains the
# base model in a sandbox; the checkpoint is evaluated, audited, and ranked on a weighted leaderboard.


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/stage.smk"
include: "rules/agent.smk"
include: "rules/evaluate.smk"
include: "rules/judge.smk"
include: "rules/report.smk"
include: "rules/cleanup.smk"


# Every cell's eval and verdict are requested too: Snakemake does not rebuild a deleted
# intermediate file whose consumers are up to date, and a lost result must come back.
rule all:
    default_target: True
    input:
        cell_paths("results/evals/{agent}/{model}/{benchmark}/seed{seed}.json"),
        cell_paths(
            "results/judge/{agent}/{model}/{benchmark}/seed{seed}.json", AUDITED_CELLS
        ),
        "results/leaderboard.csv",
        "results/status.csv",
        "results/plots/leaderboard.png",
        "results/plots/heatmap.png",
        cleanup_records(),
