# PostTrainBench: for every cell (agent x base model x benchmark x seed) an agent post-trains the
# base model in a sandbox; the checkpoint is evaluated, audited, and ranked on a weighted leaderboard.


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/stage.smk"
include: "rules/agent.smk"
include: "rules/evaluate.smk"
include: "rules/judge.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        "results/leaderboard.csv",
        "results/plots/leaderboard.png",
        "results/plots/heatmap.png",
