"""Pieces of the Snakemake HTML report (`snakemake --report`) that Snakemake does not provide."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path

from docutils.parsers.rst import directives
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


def register_rst_directives() -> None:
    directives.register_directive(EMBEDDED_IMAGE, EmbeddedImage)
