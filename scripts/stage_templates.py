"""Rule stage_templates: the published chat templates, by URL (or a local copy) and SHA-256."""

from pathlib import Path

from posttrainbench.io import atomic_write_json
from posttrainbench.templates import stage_published_templates
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    out = Path(snakemake.output[0])
    records = stage_published_templates(out.parent, snakemake.params.source)
    atomic_write_json(out, {"templates": records})
    log.info("staged %d published templates into %s", len(records), out.parent)
