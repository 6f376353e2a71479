"""Rule cleanup_workspace: remove the bulky workspace files of a judged cell; record what was removed."""

from pathlib import Path

from posttrainbench.agents.collect import size_text
from posttrainbench.io import atomic_write_json
from posttrainbench.storage import CleanupPolicy, cleanup_cell
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    run_dir = Path(snakemake.input.run).parent
    record = cleanup_cell(run_dir, CleanupPolicy.from_config(snakemake.params.cleanup))
    record["run_dir"] = str(run_dir)
    log.info("%s: removed %d files (%s), kept %d files", run_dir, record["files_removed"],
             size_text(record["bytes_removed"]), record.get("files_kept", 0))
    atomic_write_json(snakemake.output[0], record)
