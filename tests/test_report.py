"""`snakemake --report`: one self-contained HTML file with the leaderboard, the plots and per-cell
evidence, made from the workflow run on the SLURM test cluster and opened in headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_cluster import BIN, ROOT, snakemake_env

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=8000"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium (Debian package, `make system`) is needed to render the report")


@pytest.fixture(scope="module")
def report(slurm_run, tmp_path_factory) -> Path:
    workdir = slurm_run["workdir"]
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--report", str(out)],
        cwd=workdir, capture_output=True, text=True, env=snakemake_env(), timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


def _chromium(args: list[str], profile_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *args],
                          capture_output=True, text=True, timeout=120)


# Appended to a copy of the report: once the page (and the rule graph) has rendered, the boxes Chromium laid out
# for the landing page's parts are written into the page, which --dump-dom then prints.
GEOMETRY_SCRIPT = """<script>
setTimeout(function () {
  function box(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
  function all(selector) { return Array.prototype.map.call(document.querySelectorAll(selector), box); }
  var nav = document.querySelector("nav"), graph = document.querySelector("#rulegraph canvas, #rulegraph svg");
  var out = {viewport: [window.innerWidth, window.innerHeight], nav: nav && box(nav), graph: graph && box(graph),
             text: all(".prose .document > p, .prose .document > .section > p, .prose .document h1, .prose .document h2"),
             tables: all(".prose .document table"), images: all(".prose .document img"),
             status_rows: document.querySelectorAll(".prose .document table.ptb-status-table tbody tr").length};
  var pre = document.createElement("pre");
  pre.id = "ptb-geometry";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 3000);
</script>"""


def landing_geometry(report: Path, workdir: Path, size: tuple[int, int] = (1400, 1000)) -> dict:
    """The landing page's boxes ([left, top, right, bottom] in CSS pixels) in headless Chromium at ``size``."""
    page = workdir / "report-geometry.html"
    head, body_end, tail = report.read_text().rpartition("</body>")  # the last: scripts quote the tag too
    page.write_text(head + GEOMETRY_SCRIPT + body_end + tail)
    dom = _chromium([f"--window-size={size[0]},{size[1]}", "--dump-dom", page.as_uri()], workdir / "profile-geometry")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="ptb-geometry">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-3000:]
    return json.loads(html.unescape(found.group(1)))


def overlapping(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def layout_problems(geometry: dict) -> list[str]:
    """What overlaps on the landing page: any table, plot or paragraph drawn over the rule graph or the menu, or
    past the window's right edge."""
    problems = []
    width = geometry["viewport"][0]
    for kind in ("tables", "images", "text"):
        for i, part in enumerate(geometry[kind]):
            if overlapping(part, geometry["graph"]):
                problems.append(f"{kind}[{i}] {part} overlaps the rule graph {geometry['graph']}")
            if geometry["nav"] and overlapping(part, geometry["nav"]):
                problems.append(f"{kind}[{i}] {part} overlaps the menu {geometry['nav']}")
            if part[2] > width + 0.5:
                problems.append(f"{kind}[{i}] {part} runs past the window ({width} px)")
    return problems


@pytest.mark.slow
def test_report_is_one_html_file_with_leaderboard_plots_and_cell_evidence(report: Path, slurm_run):
    html = report.read_text()
    assert report.stat().st_size > 50_000
    # Self-contained: the plots are embedded as data URIs, nothing is fetched from elsewhere.
    assert html.count("data:image/png;base64,") >= 2
    # Per-cell evidence: every run record, evaluation and verdict is embedded with its labels (the base
    # reference row is not audited, so it has no verdict).
    for agent in ("base", "reference-sft"):
        for bench in ("gsm8k", "humaneval"):
            verdict = f"results/judge/{agent}/smollm2-135m/{bench}/seed1.json"
            for name in (f"results/runs/{agent}/smollm2-135m/{bench}/seed1/run.json",
                         f"results/evals/{agent}/smollm2-135m/{bench}/seed1.json"):
                assert name in html, name
            assert (verdict in html) == (agent == "reference-sft"), verdict


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_leaderboard_and_plots(report: Path, slurm_run, tmp_path):
    dom = _chromium(["--dump-dom", report.as_uri()], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    # The leaderboard table, as rendered on the landing page, holds every agent with its score.
    with open(slurm_run["workdir"] / "results" / "leaderboard.csv") as handle:
        board = list(csv.DictReader(handle))
    table = re.search(r"<table[^>]*>.*?</table>", text, re.S)
    assert table, text[:3000]
    for row in board:
        assert f">{row['agent']}<" in table.group(0)
        assert f">{row['score']}<" in table.group(0)
    images = re.findall(r'<img[^>]+src="data:image/png;base64,', text)
    assert len(images) >= 2
    # The menu lists the leaderboard, the plots and the per-cell evidence.
    for category in ("Leaderboard", "Plots", "Run records", "Evaluations", "Judge verdicts"):
        assert f">{category}<" in text, category

    shot = tmp_path / "report.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,1600", report.as_uri()], tmp_path / "profile-shot")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    # A blank page has one or two colours; text, a table and plots have thousands.
    assert colours is not None and len(colours) > 500, len(colours or [])
    shutil.copy(shot, slurm_run["workdir"] / "report-screenshot.png")


@pytest.mark.slow
def test_report_landing_page_has_status_table_and_nothing_overlaps(report: Path, slurm_run, tmp_path):
    """At 1400x1000 the rule graph, the leaderboard and status tables and the plots each get their own space."""
    text = _chromium(["--dump-dom", report.as_uri()], tmp_path / "profile-dom").stdout
    status = re.search(r'<table[^>]*ptb-status-table.*?</table>', text, re.S)
    assert status, text[:3000]
    with open(slurm_run["workdir"] / "results" / "status.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for row in rows:
        assert f">{row['cell']}<" in status.group(0)
        assert row["stage"] == "done", row
    geometry = landing_geometry(report, tmp_path)
    assert geometry["graph"] and geometry["graph"][2] > geometry["graph"][0], geometry
    assert len(geometry["tables"]) >= 2 and len(geometry["images"]) >= 2, geometry
    assert geometry["status_rows"] == 4
    assert layout_problems(geometry) == []
    shot = tmp_path / "landing.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1400,1000", report.as_uri()], tmp_path / "profile-shot")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    shutil.copy(shot, slurm_run["workdir"] / "report-landing-1400x1000.png")
