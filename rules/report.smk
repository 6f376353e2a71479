# Scoring: flagged or failed cells take the base score; weights follow the published rule.


rule leaderboard:
    input:
        evals=cell_paths("results/evals/{agent}/{model}/{benchmark}/seed{seed}.json"),
        verdicts=cell_paths("results/judge/{agent}/{model}/{benchmark}/seed{seed}.json"),
        runs=cell_paths("results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json"),
    output:
        csv="results/leaderboard.csv",
        cells="results/cells.csv",
        weights="results/leaderboard.weights.json",
        bar="results/plots/leaderboard.png",
        heatmap="results/plots/heatmap.png",
        time_utilisation="results/plots/time_utilisation.png",
    log:
        "logs/report/leaderboard.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        weights=config["scoring"]["weights"],
    script:
        "../scripts/leaderboard.py"
