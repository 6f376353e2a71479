# Scoring: flagged or failed cells take the base score; weights follow the published rule.

from posttrainbench.report import register_rst_directives

# report/workflow.rst embeds the plots in the report's landing page.
register_rst_directives()


rule leaderboard:
    input:
        evals=cell_paths("results/evals/{agent}/{model}/{benchmark}/seed{seed}.json"),
        verdicts=cell_paths(
            "results/judge/{agent}/{model}/{benchmark}/seed{seed}.json", AUDITED_CELLS
        ),
        runs=cell_paths("results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json"),
    output:
        csv=report(
            "results/leaderboard.csv",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
        ),
        cells=report(
            "results/cells.csv", caption="../report/cells.rst", category="Leaderboard"
        ),
        weights="results/leaderboard.weights.json",
        flags="results/flags.csv",
        bar=report(
            "results/plots/leaderboard.png",
            caption="../report/plot_leaderboard.rst",
            category="Plots",
        ),
        heatmap=report(
            "results/plots/heatmap.png",
            caption="../report/plot_heatmap.rst",
            category="Plots",
        ),
        time_utilisation=report(
            "results/plots/time_utilisation.png",
            caption="../report/plot_time_utilisation.rst",
            category="Plots",
        ),
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
