"""Pieces of the Snakemake HTML report (`snakemake --report`) that Snakemake does not provide."""

from __future__ import annotations

import base64
import csv
import json
import mimetypes
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.parsers.rst.directives.images import Image

EMBEDDED_IMAGE = "ptb-embedded-image"


class EmbeddedImage(Image):
    """``.. ptb-embedded-image:: path`` - an image written into the page as a data URI, so the report
    stays one self-contained file (Snakemake's own ``embeddedimage`` keeps the file path)."""

    def run(self):
        path = Path(directives.uri(self.arguments[0]))
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.arguments[0] = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        return super().run()


STATUS_TABLE = "ptb-status"


class StatusTable(Directive):
    """``.. ptb-status:: results/status.json`` - the sweep's summary line and its status table (the CSV beside
    the JSON). Cells are plain text nodes, never parsed as reStructuredText: failure reasons quote what agents
    left, and markup in them must not become links or HTML in the report."""

    required_arguments = 1

    def run(self):
        summary_path = Path(directives.uri(self.arguments[0]))
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            with open(summary_path.with_suffix(".csv"), newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            header, body = rows[0], rows[1:]
        except (OSError, ValueError, IndexError) as exc:
            # A report of results made before the status rule existed: say so, the rest of the page stands.
            return [nodes.paragraph(text=f"No status table ({summary_path}: {type(exc).__name__}).")]
        table = nodes.table(classes=["ptb-status-table"])
        group = nodes.tgroup(cols=len(header))
        table += group
        group.extend(nodes.colspec(colwidth=1) for _ in header)

        def table_row(values):
            line = nodes.row()
            for value in values:
                line += nodes.entry("", nodes.paragraph(text=value))
            return line

        head = nodes.thead()
        head += table_row(header)
        rows_node = nodes.tbody()
        rows_node.extend(table_row(values) for values in body)
        group += head
        group += rows_node
        box = nodes.container(classes=["ptb-status"])
        box += table
        return [nodes.paragraph(text=str(summary.get("summary_line", ""))), box]


def register_rst_directives() -> None:
    directives.register_directive(EMBEDDED_IMAGE, EmbeddedImage)
    directives.register_directive(STATUS_TABLE, StatusTable)
