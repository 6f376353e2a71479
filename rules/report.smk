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
        comparisons=report(
            "results/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Leaderboard",
        ),
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
        forest=report(
            "results/plots/comparisons.png",
            caption="../report/plot_comparisons.rst",
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
        bootstrap_samples=config["scoring"]["bootstrap_samples"],
        bootstrap_seed=config["scoring"]["bootstrap_seed"],
    script:
        "../scripts/leaderboard.py"


# The sweep's status table (ptb status without the queue), shown on the landing page.
rule status:
    input:
        evals=cell_paths("results/evals/{agent}/{model}/{benchmark}/seed{seed}.json"),
        verdicts=cell_paths(
            "results/judge/{agent}/{model}/{benchmark}/seed{seed}.json", AUDITED_CELLS
        ),
        runs=cell_paths("results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json"),
    output:
        csv=report(
            "results/status.csv", caption="../report/status.rst", category="Status"
        ),
        summary="results/status.json",
    log:
        "logs/report/status.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/status.py"
