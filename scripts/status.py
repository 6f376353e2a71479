"""Rule status: every cell's stage, score, flag or failure and the sweep's GPU-hours, for the report."""

from pathlib import Path

from posttrainbench.status import summary_line, write_status_files
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    out = Path(snakemake.output.csv)
    # The queue is not asked: every cell this rule waits for has finished.
    sweep = write_status_files(snakemake.config, out.parent, out, Path(snakemake.output.summary))
    log.info("%s", summary_line(sweep.summary))
