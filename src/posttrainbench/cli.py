"""``ptb``: command-line tools over a results tree laid out as in the design notes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .io import atomic_write_json, atomic_write_text


def _scoring_from_config(path: Path | None) -> tuple[dict, dict]:
    """The config's ``scoring`` section and published model names -> model keys (``models.<key>.display_name``)."""
    if path is None:
        return {}, {}
    from .config import load_config

    config = load_config(path)
    names = {spec["display_name"]: key for key, spec in config["models"].items() if spec.get("display_name")}
    return config["scoring"], names


def _usable_verdicts(verdict_files: list[Path]) -> list[Path]:
    """The verdict files the flags report can read; the others leave their cells unjudged (logged by the
    leaderboard), they never stop the report."""
    from .judge.report import flag_rows
    from .leaderboard import verdict_problem

    usable = []
    for path in verdict_files:
        if not Path(path).is_file() or verdict_problem(Path(path))[1] is not None:
            continue
        try:
            flag_rows([Path(path)])
        except Exception as exc:  # noqa: BLE001 - a malformed verdict is left out of the report, named
            logging.getLogger(__name__).warning("%s: left out of the flags report (%s: %s)",
                                                path, type(exc).__name__, str(exc)[:200])
            continue
        usable.append(Path(path))
    return usable


def write_leaderboard(results_dir: Path, out_csv: Path, plots_dir: Path | None,
                      config_weights: dict | None, cells_csv: Path | None = None,
                      eval_files: list[Path] | None = None, flags_csv: Path | None = None,
                      verdict_files: list[Path] | None = None, comparisons_csv: Path | None = None, *,
                      bootstrap_samples: int = 2000, bootstrap_seed: int = 0, published_dir: Path | None = None,
                      model_names: dict | None = None, published_seeds: int = 3) -> None:
    """Build the leaderboard CSV (+ per-cell CSV, weights JSON, pairwise comparisons, plots, flags report) from
    ``results_dir``; ``published_dir``: published per-agent tables to put in the same table and plots."""
    from .leaderboard import leaderboard_with_uncertainty

    # The workflow names the verdicts it asked for: any of them missing leaves its cell unjudged.
    scored = leaderboard_with_uncertainty(results_dir, config_weights, eval_files,
                                          judged_tree=True if verdict_files else None,
                                          bootstrap_samples=bootstrap_samples, bootstrap_seed=bootstrap_seed,
                                          published_dir=published_dir, model_names=model_names,
                                          published_seeds=published_seeds)
    board, cells, weights, comparisons = scored.board, scored.cells, scored.weights, scored.comparisons
    atomic_write_text(out_csv, board.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(comparisons_csv or out_csv.with_name("comparisons.csv"),
                      comparisons.to_csv(index=False, float_format="%.4f"))
    atomic_write_json(out_csv.with_name(out_csv.stem + ".weights.json"),
                      {"source": weights.source, "weights": weights.values})
    if cells_csv is not None:
        atomic_write_text(cells_csv, cells.to_csv(index=False, float_format="%.6f"))
    if flags_csv is not None:
        from .judge.report import flags_csv_text

        if verdict_files is None:
            verdict_files = sorted(Path(results_dir, "judge").rglob("seed*.json"))
        atomic_write_text(flags_csv, flags_csv_text(_usable_verdicts(verdict_files)))
    if plots_dir is not None:
        from .plots import write_plots

        write_plots(board, sorted(weights.values), plots_dir, weights.source, comparisons)
    width = max(len(a) for a in board.agent)
    print(f"weights from {weights.source}: " + ", ".join(f"{b}={w:.4f}" for b, w in weights.values.items()))
    for row in board.itertuples():
        spread = "" if row.score_std != row.score_std else f" ± {row.score_std:.1f}"
        interval = "" if row.score_ci_low != row.score_ci_low else \
            f"  95% CI [{row.score_ci_low:.1f}, {row.score_ci_high:.1f}]"
        note = " (reference)" if row.reference else ""
        if row.source == "published":
            print(f"{row.agent:<{width}}  {row.score:6.1f}{interval}  (published) {row.ci_note}")
            continue
        caveat = f"  [{row.ci_note}]" if row.ci_note else ""
        print(f"{row.agent:<{width}}  {row.score:6.1f}{spread}{interval}  cells={row.n_cells} "
              f"flagged={row.n_flagged} failed={row.n_failed} unjudged={row.n_unjudged}{note}{caveat}")


def write_requests_file(config_path: Path, benchmark: str, model_dir: Path, out: Path, *, limit: int | None,
                        family: str | None = None, benchmark_dir: Path | None = None,
                        templates_dir: Path | None = None, prompting: str = "chat", reference: bool = False) -> int:
    """``ptb requests``: write what the evaluator would send for the first ``limit`` items, without a model run.

    The requests are built by the evaluator's own code (:func:`posttrainbench.evaluation.prepare_requests`) on the
    checkpoint's evaluation view (``model_dir`` is its own tokenizer reference here). The benchmark comes from
    ``benchmark_dir`` or ``resources/benchmarks/<benchmark>`` when staged there, else it is staged into a temporary
    folder from the config's source; the published templates from ``templates_dir`` or ``resources/templates``,
    else they are staged from the config's source. Returns the number of requests written; raises
    :class:`~posttrainbench.evaluation.EvaluationError` when a request would not fit its context."""
    import tempfile

    from . import benchmarks as bm
    from .checkpoint_guard import prepare_view
    from .config import load_config
    from .evaluation import prepare_requests
    from .protocol import get_protocol

    config = load_config(config_path)
    options = config["evaluation"]
    spec = bm.get_spec(benchmark)
    proto = get_protocol(options.get("protocol"))
    templates = options["templates"]
    with tempfile.TemporaryDirectory(prefix="ptb-requests-") as tmp:
        tmp = Path(tmp)
        staged = benchmark_dir or Path("resources/benchmarks") / benchmark
        if not (staged / bm.META_FILE).is_file():
            staged = tmp / "benchmark"
            bm.stage_benchmark(benchmark, staged, source=options["per_benchmark"].get(benchmark, {}).get("source"))
        if templates["use"] == "published" and templates_dir is None:
            templates_dir = Path("resources/templates")
            if not (templates_dir / "staged.json").is_file():
                from .templates import stage_published_templates

                templates_dir = tmp / "templates"
                stage_published_templates(templates_dir, templates.get("source"))
        records = bm.read_test_records(staged)[: limit or None]
        sampling_mode = "greedy" if proto.sampling == "greedy" else "published"
        view = prepare_view(Path(model_dir), None, tmp / "view", sampling=sampling_mode)
        per = options["per_benchmark"].get(benchmark, {})
        if family is None:
            # The model's own config names its family; else the config's, when all its models share one.
            from .evaluation import detect_family

            families = {m.get("family") for m in config["models"].values()} - {None, "auto"}
            family = detect_family(Path(model_dir)) or (families.pop() if len(families) == 1 else "auto")
        _tok, requests, _details = prepare_requests(
            view, spec, records, staged, proto, prompting=prompting, family=family, family_dir=model_dir,
            templates=templates["use"], templates_dir=templates_dir, num_fewshot=per.get("num_fewshot"),
            max_tokens=per.get("max_tokens"), reference=reference)
    from .eval_requests import write_requests

    write_requests(requests, out)
    return len(requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ptb", description="PostTrainBench pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)

    lb = sub.add_parser("leaderboard", help="build the weighted leaderboard from a results tree")
    lb.add_argument("results_dir", type=Path, help="directory holding evals/ (and judge/)")
    lb.add_argument("--out", type=Path, required=True, help="leaderboard CSV to write")
    lb.add_argument("--plots", type=Path, default=None, help="directory for leaderboard.png and heatmap.png")
    lb.add_argument("--cells", type=Path, default=None, help="also write the per-cell table here")
    lb.add_argument("--flags", type=Path, default=None,
                    help="also write the flags report (each flag with its evidence) here")
    lb.add_argument("--config", type=Path, default=None,
                    help="workflow config whose scoring.weights apply when reference rows are missing (its "
                         "scoring.bootstrap_* settings and model display names apply too)")
    lb.add_argument("--comparisons", type=Path, default=None,
                    help="pairwise comparisons CSV to write (default: comparisons.csv beside --out)")
    lb.add_argument("--bootstrap-samples", type=int, default=None,
                    help="bootstrap resamples for the 95%% intervals (default: scoring.bootstrap_samples, 2000; "
                         "0: no intervals)")
    lb.add_argument("--bootstrap-seed", type=int, default=None,
                    help="seed of the bootstrap (default: scoring.bootstrap_seed, 0)")
    lb.add_argument("--published", type=Path, default=None,
                    help="directory of published per-agent tables (aggregated_avg_<Agent>.csv, optional "
                         "aggregated_std_<Agent>.csv) to put in the same table and plots, marked published")
    lb.add_argument("--published-seeds", type=int, default=3,
                    help="seeds the published std tables are over (for their normal-approximation interval)")

    check = sub.add_parser("check-config", help="validate a workflow config and print its cell count")
    check.add_argument("config", type=Path)

    plan = sub.add_parser("plan", help="jobs, requested GPU- and CPU-hours, expected evaluation and API cost, disk "
                                       "and missing staged inputs of a config's sweep, before launch (docs/hpc.md)")
    plan.add_argument("config", type=Path)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (keys: posttrainbench.plan)")
    plan.add_argument("--tokens-per-second", type=float, default=None,
                      help="output tokens per second of one evaluation job (default: plan.eval_tokens_per_second)")
    plan.add_argument("--directory", type=Path, default=Path("."),
                      help="the workflow's directory, where staged inputs are looked for (default: here)")

    req = sub.add_parser("requests", help="write the requests the evaluator would send, without running a model")
    req.add_argument("--config", type=Path, required=True, help="workflow config (its evaluation protocol applies)")
    req.add_argument("--benchmark", required=True, help="benchmark key, e.g. gsm8k")
    req.add_argument("--model-dir", type=Path, required=True, help="a checkpoint folder (config and tokenizer)")
    req.add_argument("--limit", type=int, default=None, help="first N items (default: all)")
    req.add_argument("--out", type=Path, required=True, help="JSONL file to write, one request per line")
    req.add_argument("--family", default=None, help="chat-template family (default: from the model's config.json)")
    req.add_argument("--benchmark-dir", type=Path, default=None, help="a staged benchmark folder to read items from")
    req.add_argument("--templates-dir", type=Path, default=None, help="folder of staged published templates")
    req.add_argument("--prompting", choices=("chat", "few-shot"), default="chat")
    req.add_argument("--reference", action="store_true", help="a reference row (one attempt, first rung)")

    site = sub.add_parser("validate-site", help="run the reference rows of a config's matrix and compare them "
                                                "with the published baseline tables (docs/hpc.md)")
    site.add_argument("--config", type=Path, required=True, help="workflow config (its reference rows are run)")
    site.add_argument("--published", type=Path, default=None,
                      help="folder of published tables (aggregated_baseline.csv, aggregated_baseline_fewshot.csv; "
                           "default: tests/data/published)")
    site.add_argument("--cores", default=None, help="Snakemake --cores (default: all, without --profile)")
    site.add_argument("--profile", default=None, help="Snakemake profile, e.g. slurm")
    site.add_argument("--directory", type=Path, default=None,
                      help="working directory of the run (results/ and resources/ there; default: here)")
    site.add_argument("--compare-only", action="store_true", help="compare the results already there, run nothing")
    site.add_argument("--out", type=Path, default=None, help="comparison CSV (default: results/site_validation.csv)")
    site.add_argument("snakemake_args", nargs="*", help="further Snakemake arguments, after --")

    st = sub.add_parser("status", help="every cell's stage, score, flag or failure, and the sweep's GPU-hours "
                                       "(read-only: result files and squeue)")
    st.add_argument("results_dir", type=Path, nargs="?", default=Path("results"),
                    help="the results tree (default: results; its parent is the workflow's directory)")
    st.add_argument("--config", type=Path, default=None,
                    help="the workflow's config (default: config/config.yaml beside the results tree)")
    st.add_argument("--watch", type=float, nargs="?", const=30.0, default=None, metavar="SECONDS",
                    help="redraw every SECONDS (default 30) until interrupted")
    st.add_argument("--json", action="store_true", help="print JSON: the summary and every cell")

    args = parser.parse_args(argv)
    if args.command == "plan":
        from .plan import main as plan_main

        return plan_main(args.config, as_json=args.json, tokens_per_second=args.tokens_per_second,
                         workdir=args.directory)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .config import ConfigError
    from .leaderboard import LeaderboardError
    from .uncertainty import UncertaintyError

    if args.command == "validate-site":
        from .site_validation import validate_site

        return validate_site(args.config, published_dir=args.published, directory=args.directory, cores=args.cores,
                             profile=args.profile, compare_only=args.compare_only, out_csv=args.out,
                             extra=args.snakemake_args)

    if args.command == "requests":
        from .artifacts import ArtifactError
        from .benchmarks import BenchmarkNotAvailable
        from .checkpoint_guard import CheckpointRejected
        from .evaluation import EvaluationError, InfrastructureError

        try:
            n = write_requests_file(args.config, args.benchmark, args.model_dir, args.out, limit=args.limit,
                                    family=args.family, benchmark_dir=args.benchmark_dir,
                                    templates_dir=args.templates_dir, prompting=args.prompting,
                                    reference=args.reference)
        except (ConfigError, KeyError, BenchmarkNotAvailable, CheckpointRejected, EvaluationError,
                InfrastructureError, ArtifactError) as exc:
            print(f"ptb requests: error: {str(exc).strip()}", file=sys.stderr)
            return 2
        print(f"{args.out}: {n} requests")
        return 0

    if args.command == "status":
        from .status import main as status_main

        return status_main(args.results_dir, args.config, watch=args.watch, as_json=args.json)

    try:
        if args.command == "leaderboard":
            scoring, names = _scoring_from_config(args.config)
            samples = args.bootstrap_samples if args.bootstrap_samples is not None else \
                scoring.get("bootstrap_samples", 2000)
            seed = args.bootstrap_seed if args.bootstrap_seed is not None else scoring.get("bootstrap_seed", 0)
            if samples < 0 or args.published_seeds < 1:
                raise LeaderboardError("--bootstrap-samples must be 0 or more and --published-seeds 1 or more")
            write_leaderboard(args.results_dir, args.out, args.plots, scoring.get("weights"), args.cells,
                              flags_csv=args.flags, comparisons_csv=args.comparisons, bootstrap_samples=samples,
                              bootstrap_seed=seed, published_dir=args.published, model_names=names,
                              published_seeds=args.published_seeds)
        elif args.command == "check-config":
            from .config import iter_cells, load_config

            cells = list(iter_cells(load_config(args.config)))
            print(f"{args.config}: valid, {len(cells)} cells")
    except (ConfigError, LeaderboardError, UncertaintyError) as exc:
        print(f"ptb: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
