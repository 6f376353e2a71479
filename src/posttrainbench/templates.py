"""The chat template each checkpoint is evaluated with: chosen by model family from config, never by the
checkpoint (a submission cannot gain or lose points by shipping its own template).

``published`` (the protocol's default): the published harness's per-family files (``qwen3.jinja``,
``gemma3.jinja`` and, for native tool calls, ``gemma3_tool_calling.jinja``, ``smollm.jinja``), staged by URL and
SHA-256 into a folder (:func:`stage_published_templates`). ``project``: this project's own templates
(``chat_templates/``: ChatML turns for qwen3 and smollm, Gemma turns for gemma3, each with a Hermes tool-calling
variant), for machines where the published files cannot be staged; an eval JSON records which one was used and its
SHA-256, and the protocol's settings hash covers it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .artifacts import ArtifactError, stage_artifact, verified_copy

FAMILIES = ("qwen3", "gemma3", "smollm")
TEMPLATE_SOURCES = ("published", "project")
KINDS = ("chat", "tool_calling")

# (family, kind) -> artifact key of the published template (benchmarks/data/published_artifacts.json).
PUBLISHED = {
    ("qwen3", "chat"): "template_qwen3", ("qwen3", "tool_calling"): "template_qwen3",
    ("gemma3", "chat"): "template_gemma3", ("gemma3", "tool_calling"): "template_gemma3_tool_calling",
    ("smollm", "chat"): "template_smollm", ("smollm", "tool_calling"): "template_smollm",
}
PROJECT_DIR = Path(__file__).parent / "chat_templates"
PROJECT = {
    ("qwen3", "chat"): "chatml.jinja", ("qwen3", "tool_calling"): "chatml_tools.jinja",
    ("smollm", "chat"): "chatml.jinja", ("smollm", "tool_calling"): "chatml_tools.jinja",
    ("gemma3", "chat"): "gemma3.jinja", ("gemma3", "tool_calling"): "gemma3_tools.jinja",
}


class TemplateError(RuntimeError):
    """No usable template: an unknown family or source, or published files that are not staged."""


def published_file_name(key: str) -> str:
    from .artifacts import artifact

    return Path(artifact(key)["path"]).name


def stage_published_templates(out_dir: Path, source: str | Path | None = None) -> list[dict]:
    """Stage every published template into ``out_dir`` (from its URL, or a local folder/checkout ``source``)."""
    records = []
    for key in sorted(set(PUBLISHED.values())):
        records.append(stage_artifact(key, Path(out_dir) / published_file_name(key), source))
    return records


def chat_template(family: str, kind: str = "chat", source: str = "published",
                  templates_dir: Path | None = None) -> tuple[str, str, str]:
    """``(template text, label, sha256)`` for ``family`` and ``kind`` (``chat`` or ``tool_calling``).

    ``published`` reads the staged file in ``templates_dir`` and checks its checksum; a missing or modified file
    is a :class:`TemplateError` saying how to stage it."""
    if family not in FAMILIES:
        raise TemplateError(f"chat-template family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if kind not in KINDS:
        raise TemplateError(f"template kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if source == "project":
        path = PROJECT_DIR / PROJECT[(family, kind)]
        label = f"project:{path.name}"
    elif source == "published":
        key = PUBLISHED[(family, kind)]
        if templates_dir is None:
            raise TemplateError("the published templates need a staged templates folder")
        path = Path(templates_dir) / published_file_name(key)
        if not verified_copy(key, path):
            raise TemplateError(f"{path} is missing or not the published file: stage it (snakemake "
                                f"resources/templates/.staged, or set evaluation.templates.source to a local copy)"
                                f", or set evaluation.templates.use: project")
        label = f"published:{path.name}"
    else:
        raise TemplateError(f"evaluation.templates.use must be one of {', '.join(TEMPLATE_SOURCES)}, not {source!r}")
    data = path.read_bytes()
    return data.decode("utf-8"), label, hashlib.sha256(data).hexdigest()


__all__ = ["ArtifactError", "TemplateError", "chat_template", "stage_published_templates", "FAMILIES"]
