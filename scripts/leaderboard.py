"""Rule leaderboard: the weighted leaderboard with its intervals, the pairwise comparisons, the per-cell table and
plots for this config's cells."""

from pathlib import Path

from posttrainbench.cli import write_leaderboard
from posttrainbench.plots import write_time_utilisation
from posttrainbench.workflow import logged

with logged(snakemake):
    out = Path(snakemake.output.csv)
    write_leaderboard(
        results_dir=out.parent,
        out_csv=out,
        plots_dir=Path(snakemake.output.bar).parent,
        config_weights=snakemake.params.weights,
        cells_csv=Path(snakemake.output.cells),
        eval_files=[Path(p) for p in snakemake.input.evals],
        flags_csv=Path(snakemake.output.flags),
        verdict_files=[Path(p) for p in snakemake.input.verdicts],
        comparisons_csv=Path(snakemake.output.comparisons),
        bootstrap_samples=snakemake.params.bootstrap_samples,
        bootstrap_seed=snakemake.params.bootstrap_seed,
    )
    write_time_utilisation(out, [Path(p) for p in snakemake.input.runs], Path(snakemake.output.time_utilisation))
