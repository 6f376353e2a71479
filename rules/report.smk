# Scoring: flagged or failed cells take the base score; weights follow the published rule.


rule leaderboard:
    input:
        evals=cell_paths("results/evals/" + CELL_PATTERN + ".json"),
        verdicts=cell_paths("results/judge/" + CELL_PATTERN + ".json"),
    output:
        csv="results/leaderboard.csv",
        cells="results/cells.csv",
        weights="results/leaderboard.weights.json",
        bar="results/plots/leaderboard.png",
        heatmap="results/plots/heatmap.png",
    params:
        weights=config["scoring"]["weights"],
    log:
        "logs/report/leaderboard.log",
    resources:
        mem_mb=2000,
        runtime=10,
    localrule: True
    script:
        "../scripts/leaderboard.py"
