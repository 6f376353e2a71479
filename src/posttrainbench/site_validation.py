"""Validating a site: the reference rows of the matrix (``base``, ``base-fewshot``, ``instruct``), run on this site,
beside the published baseline tables.

``ptb validate-site`` asks Snakemake for the reference cells' eval JSONs only, then :func:`compare_reference_rows`
puts each cell's score beside the published figure with a 95% interval from the item count of our evaluation:

* benchmarks scored per item as right or wrong: the Wilson score interval of our score over ``n`` items;
* benchmarks graded by an LLM with non-binary per-item scores (Arena-Hard writing, HealthBench): a normal interval,
  our score ± 1.96 × the items' standard deviation / √n, from the per-item grades in the samples file; without
  them, the Wilson interval (the largest variance a mean of values in [0, 1] can have) stands in.

A cell *differs beyond noise* when the published figure lies outside that interval. The published tables are the
website's CSV format (``model`` column, then one column per benchmark, fractions): ``aggregated_baseline.csv``
holds the base and instruct models, ``aggregated_baseline_fewshot.csv`` the few-shot base row. A config model is
found there under its ``display_name`` (base rows; else the last part of its ``base`` source) and the last part of
its ``instruct`` source (instruct rows).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .cells import REFERENCE_AGENTS, Cell

Z95 = 1.959963984540054
# Which published table holds each reference agent's row, and whether the row is named after the base model.
PUBLISHED_TABLES = {
    "base": ("aggregated_baseline.csv", "base"),
    "instruct": ("aggregated_baseline.csv", "instruct"),
    "base-fewshot": ("aggregated_baseline_fewshot.csv", "base"),
}
MATCH_VERDICT = "matches the published reference rows"


class SiteValidationError(ValueError):
    """The comparison cannot be made at all (no published tables, a malformed table)."""


# ------------------------------------------------------------------------------------------------------------------
# intervals
# ------------------------------------------------------------------------------------------------------------------


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed over ``n`` items."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = min(1.0, max(0.0, p))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 and 1 the bound is the observed value itself (rounding would otherwise leave it just outside).
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high


def normal_interval(score: float, values: list[float], z: float = Z95) -> tuple[float, float]:
    """``score`` ± z × the standard error of the mean of the per-item ``values``."""
    n = len(values)
    if n < 2:
        raise ValueError("a normal interval needs at least two items")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return score - half, score + half


def interval_for(score: float, n: int, *, graded: bool, values: list[float] | None = None
                 ) -> tuple[float, float, str]:
    """``(low, high, method)`` of the 95% interval of one cell's score (see the module's docstring)."""
    usable = [float(v) for v in values or [] if v is not None]
    if graded and len(usable) >= 2 and len(usable) == n:
        low, high = normal_interval(score, usable)
        return low, high, "normal"
    low, high = wilson_interval(score, n)
    return low, high, "wilson" if not graded else "wilson-bound"


# ------------------------------------------------------------------------------------------------------------------
# published tables and names
# ------------------------------------------------------------------------------------------------------------------


def read_table(path: Path) -> dict[str, dict[str, float]]:
    """A published CSV: ``{model name: {benchmark: fraction}}`` (empty cells left out)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or reader.fieldnames[0] != "model":
            raise SiteValidationError(f"{path}: the first column must be 'model' (the published CSV format)")
        table: dict[str, dict[str, float]] = {}
        for line, row in enumerate(reader, 2):
            name = (row.pop("model") or "").strip()
            figures = {}
            for benchmark, value in row.items():
                if value in (None, ""):
                    continue
                try:
                    figures[benchmark] = float(value)
                except ValueError:
                    raise SiteValidationError(f"{path}:{line}: {benchmark} is not a number: {value!r}") from None
            table[name] = figures
    return table


def read_published(folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Every published table ``folder`` holds, by file name (a table that is absent is simply not there)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SiteValidationError(f"published tables folder {folder} does not exist")
    names = sorted({name for name, _ in PUBLISHED_TABLES.values()})
    tables = {name: read_table(folder / name) for name in names if (folder / name).is_file()}
    if not tables:
        raise SiteValidationError(f"{folder} holds none of {', '.join(names)}")
    return tables


def _last_part(source: str | None) -> str | None:
    if not source:
        return None
    return str(source).rstrip("/").split("/")[-1].split(":")[-1] or None


def published_name(models: dict[str, dict[str, Any]], model: str, agent: str) -> str | None:
    """The name of ``model``'s row for reference ``agent`` in the published table (``None``: it has none)."""
    spec = models.get(model) or {}
    _table, which = PUBLISHED_TABLES[agent]
    if which == "instruct":
        return _last_part(spec.get("instruct"))
    return spec.get("display_name") or _last_part(spec.get("base"))


# ------------------------------------------------------------------------------------------------------------------
# the comparison
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class CellComparison:
    agent: str
    model: str
    benchmark: str
    seed: int
    published_name: str | None
    ours: float | None = None
    n: int | None = None
    published: float | None = None
    low: float | None = None
    high: float | None = None
    method: str | None = None
    outcome: str = "not compared"  # match | differs | not compared
    reason: str | None = None  # why a cell was not compared

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.model}/{self.benchmark}/seed{self.seed}"

    @property
    def difference(self) -> float | None:
        return None if self.ours is None or self.published is None else self.ours - self.published


@dataclass
class SiteValidation:
    cells: list[CellComparison] = field(default_factory=list)

    @property
    def compared(self) -> list[CellComparison]:
        return [c for c in self.cells if c.outcome in ("match", "differs")]

    @property
    def differing(self) -> list[CellComparison]:
        return [c for c in self.cells if c.outcome == "differs"]

    @property
    def not_compared(self) -> list[CellComparison]:
        return [c for c in self.cells if c.outcome == "not compared"]

    @property
    def matches(self) -> bool:
        """Every reference cell compared, and none differs beyond noise."""
        return bool(self.cells) and not self.differing and not self.not_compared

    def verdict(self) -> str:
        if self.differing:
            shown = "; ".join(f"{c.key} (ours {c.ours:.4f}, published {c.published:.4f}, 95% interval "
                              f"[{c.low:.4f}, {c.high:.4f}])" for c in self.differing)
            return f"differs beyond noise on {len(self.differing)} of {len(self.compared)} cells: {shown}"
        if not self.cells:
            return "no reference rows in this config: nothing to compare"
        if not self.compared:
            return f"not compared: none of the {len(self.cells)} reference cells could be compared"
        if self.not_compared:
            return (f"{MATCH_VERDICT} on the {len(self.compared)} cells compared; not compared: "
                    f"{len(self.not_compared)} of {len(self.cells)} cells (listed above)")
        return MATCH_VERDICT


def compare_reference_rows(ours: Iterable[dict[str, Any]], published: dict[str, dict[str, dict[str, float]]],
                           models: dict[str, dict[str, Any]]) -> SiteValidation:
    """Put each reference cell of ``ours`` beside its published figure.

    ``ours``: one dict per reference cell with ``agent``, ``model``, ``benchmark``, ``seed`` and, when it was
    evaluated, ``status``, ``score``, ``n``, ``graded`` (non-binary per-item scores) and optionally ``values`` (the
    per-item scores); ``published``: :func:`read_published`'s tables; ``models``: the config's ``models``, for
    the names of the published rows. Pure: reads nothing, writes nothing."""
    result = SiteValidation()
    for entry in sorted(ours, key=lambda e: (e["model"], e["benchmark"], e["agent"], e["seed"])):
        agent, model, benchmark = entry["agent"], entry["model"], entry["benchmark"]
        if agent not in PUBLISHED_TABLES:
            raise SiteValidationError(f"{agent!r} is not a reference agent ({', '.join(PUBLISHED_TABLES)})")
        name = published_name(models, model, agent)
        cell = CellComparison(agent, model, benchmark, int(entry["seed"]), name)
        result.cells.append(cell)
        table_name = PUBLISHED_TABLES[agent][0]
        table = published.get(table_name)
        row = None if table is None or name is None else table.get(name)
        if row is None and table is not None and name is not None:
            # The website's names differ in case only at times (e.g. a hub id's casing).
            row = next((r for n, r in table.items() if n.lower() == name.lower()), None)
        if table is None:
            cell.reason = f"no published table {table_name}"
        elif name is None:
            cell.reason = f"no published row name for models.{model} (set its display_name or instruct)"
        elif row is None:
            cell.reason = f"{table_name} has no row {name!r}"
        elif benchmark not in row:
            cell.reason = f"{table_name} row {name!r} has no {benchmark} figure"
        else:
            cell.published = row[benchmark]
        status = entry.get("status")
        if status is None:
            cell.reason = cell.reason or "not evaluated (no eval JSON)"
            continue
        if status != "ok" or entry.get("score") is None:
            cell.reason = cell.reason or f"our evaluation {status}: {str(entry.get('error') or '')[:120]}"
            continue
        cell.ours, cell.n = float(entry["score"]), int(entry.get("n") or 0)
        if cell.n < 1:
            cell.reason = cell.reason or "our eval records no item count n"
            continue
        cell.low, cell.high, cell.method = interval_for(cell.ours, cell.n, graded=bool(entry.get("graded")),
                                                        values=entry.get("values"))
        if cell.published is None:
            continue
        # A float tolerance: a published figure equal to an interval's end is inside it.
        inside = cell.low - 1e-9 <= cell.published <= cell.high + 1e-9
        cell.outcome = "match" if inside else "differs"
        cell.reason = None
    return result


def format_report(result: SiteValidation) -> str:
    """The comparison as a text table (one line per cell, by model and benchmark) and the verdict line."""
    header = ("agent", "model", "published row", "benchmark", "seed", "n", "ours", "published", "diff",
              "95% interval", "method", "outcome")
    rows = []
    for c in result.cells:
        number = (lambda v: "-" if v is None else f"{v:.4f}")
        diff = c.difference
        rows.append((c.agent, c.model, c.published_name or "-", c.benchmark, str(c.seed),
                     "-" if c.n is None else str(c.n), number(c.ours), number(c.published),
                     "-" if diff is None else f"{diff:+.4f}",
                     "-" if c.low is None else f"[{c.low:.4f}, {c.high:.4f}]", c.method or "-",
                     c.outcome if c.outcome != "not compared" else f"not compared: {c.reason}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in [header, *rows]]
    lines.append("")
    lines.append("intervals: wilson = Wilson score interval over n items; normal = score ± 1.96 × sd(items)/√n "
                 "for graded benchmarks with non-binary item scores; wilson-bound = Wilson as a bound when item "
                 "scores are not at hand")
    lines.append(f"verdict: {result.verdict()}")
    return "\n".join(lines)


def comparison_csv(result: SiteValidation) -> str:
    """One CSV line per cell, for keeping beside the results."""
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["agent", "model", "published_row", "benchmark", "seed", "n", "ours", "published",
                     "difference", "low", "high", "method", "outcome", "reason"])
    for c in result.cells:
        writer.writerow([c.agent, c.model, c.published_name or "", c.benchmark, c.seed, c.n if c.n else "",
                         "" if c.ours is None else repr(c.ours), "" if c.published is None else repr(c.published),
                         "" if c.difference is None else repr(c.difference), "" if c.low is None else repr(c.low),
                         "" if c.high is None else repr(c.high), c.method or "", c.outcome, c.reason or ""])
    return out.getvalue()


# ------------------------------------------------------------------------------------------------------------------
# reading our results, and running the reference rows
# ------------------------------------------------------------------------------------------------------------------


def reference_cells(config: dict) -> list[Cell]:
    """The reference rows of a validated config's matrix."""
    from .config import iter_cells

    return [cell for cell in iter_cells(config) if cell.is_reference]


def _item_values(eval_json: Path, graded: bool) -> list[float] | None:
    """Per-item scores from the samples file beside an eval JSON: the grader's grade (``correct``) for graded
    benchmarks, the scorer's ``value`` otherwise; ``None`` when the file is absent or unreadable."""
    from .scoring_jobs import samples_path

    path = samples_path(eval_json)
    if not path.is_file():
        return None
    values = []
    try:
        with open(path, encoding="utf-8") as handle:
            for raw in handle:
                if raw.strip():
                    line = json.loads(raw)
                    value = line.get("correct") if graded else line.get("value")
                    values.append(None if value is None else float(value))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return values


def collect_results(cells: Iterable[Cell], results_dir: Path) -> list[dict[str, Any]]:
    """What :func:`compare_reference_rows` needs of each cell, read from ``results_dir``'s eval JSONs."""
    from .benchmarks import get_spec

    entries = []
    for cell in cells:
        entry: dict[str, Any] = {"agent": cell.agent, "model": cell.model, "benchmark": cell.benchmark,
                                 "seed": cell.seed}
        path = cell.eval_json(results_dir)
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                record = {"status": "unreadable", "error": f"{path}: {exc}"}
            graded = bool(get_spec(cell.benchmark).graded)
            entry.update(status=record.get("status", "ok"), score=record.get("score"), n=record.get("n"),
                         error=record.get("error"), graded=graded, values=_item_values(path, graded))
        entries.append(entry)
    return entries


def snakemake_command(config_path: Path, targets: list[str], *, directory: Path | None, cores: str | None,
                      profile: str | None, extra: list[str]) -> list[str]:
    """The Snakemake command that builds only ``targets`` (the reference cells' eval JSONs)."""
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    command = [exe, "--configfile", str(Path(config_path).resolve())]
    snakefile = Path.cwd() / "Snakefile"
    if directory is not None:
        if not snakefile.is_file():
            snakefile = Path(__file__).resolve().parents[2] / "Snakefile"
        command += ["--snakefile", str(snakefile), "--directory", str(directory)]
    if profile:
        command += ["--profile", profile]
    if cores or not profile:
        command += ["--cores", cores or "all"]
    return command + list(extra) + ["--", *targets]


def run_reference_rows(config_path: Path, targets: list[str], *, directory: Path | None, cores: str | None,
                       profile: str | None, extra: list[str]) -> int:
    """Run Snakemake for ``targets`` with its output passed through; returns its exit code."""
    command = snakemake_command(config_path, targets, directory=directory, cores=cores, profile=profile,
                                extra=extra)
    print("running: " + " ".join(command[:-len(targets)] if targets else command)
          + f" <{len(targets)} reference eval JSONs>", flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, env=env, check=False).returncode


def default_published_dir() -> Path:
    """The published tables kept with this checkout (``tests/data/published``)."""
    return Path(__file__).resolve().parents[2] / "tests" / "data" / "published"


def validate_site(config_path: Path, *, published_dir: Path | None = None, directory: Path | None = None,
                  cores: str | None = None, profile: str | None = None, compare_only: bool = False,
                  out_csv: Path | None = None, extra: list[str] | None = None) -> int:
    """``ptb validate-site``: run the reference rows of ``config_path``'s matrix (unless ``compare_only``), print
    them beside the published tables with the verdict; returns 0 when they match, 1 when not, 2 on a setup
    error. The comparison is also written to ``out_csv`` (default ``results/site_validation.csv``)."""
    import time

    from .config import ConfigError, load_config
    from .io import atomic_write_text

    started = time.monotonic()
    try:
        config = load_config(config_path)
        tables = read_published(published_dir or default_published_dir())
    except (ConfigError, SiteValidationError, OSError) as exc:
        print(f"ptb validate-site: error: {exc}", file=sys.stderr)
        return 2
    cells = reference_cells(config)
    agents = sorted({c.agent for c in cells})
    print(f"{config_path}: {len(cells)} reference cells (agents {', '.join(agents) or 'none'}; reference agents "
          f"are {', '.join(REFERENCE_AGENTS)})", flush=True)
    workdir = Path(directory) if directory is not None else Path.cwd()
    if cells and not compare_only:
        code = run_reference_rows(Path(config_path), [str(c.eval_json("results")) for c in cells],
                                  directory=directory, cores=cores, profile=profile, extra=list(extra or []))
        if code != 0:
            # With keep-going the other cells are done; a cell without an eval JSON is listed as not compared.
            print(f"snakemake exited with code {code}; comparing what it produced", flush=True)
    result = compare_reference_rows(collect_results(cells, workdir / "results"), tables, config["models"])
    print(format_report(result))
    target = Path(out_csv) if out_csv is not None else workdir / "results" / "site_validation.csv"
    atomic_write_text(target, comparison_csv(result))
    print(f"comparison written to {target}; wall time {time.monotonic() - started:.0f} s")
    return 0 if result.matches else 1
