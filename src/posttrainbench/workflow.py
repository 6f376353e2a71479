"""Glue for the scripts that Snakemake rules run: logging into the rule's log file, and the confinement
of the jobs that read what agents left (see :mod:`posttrainbench.confine`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from .image_check import check_image_package


def checkout_source(snakemake) -> Path:
    """The workflow's own ``src/posttrainbench``: beside the directory of the rule's script."""
    scriptdir = getattr(snakemake, "scriptdir", None)
    root = Path(scriptdir).parent if scriptdir else Path.cwd()
    return root / "src" / "posttrainbench"


@contextlib.contextmanager
def logged(snakemake):
    """Send this job's logging, stdout and stderr (including library chatter) to ``log[0]``."""
    # Progress bars turn a log into megabytes of carriage returns.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    path = Path(snakemake.log[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        # Child processes and C extensions write to the file descriptors, not sys.stdout.
        saved = os.dup(1), os.dup(2)
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        logging.basicConfig(level=logging.INFO, stream=handle, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            # Inside an image, its package must be this checkout's (one line and no traceback otherwise).
            check_image_package(checkout_source(snakemake))
            yield logging.getLogger(f"posttrainbench.rule.{snakemake.rule}")
        except SystemExit as exc:  # a deliberate exit (the confined run's exit code): no traceback
            if isinstance(exc.code, str):
                logging.error("rule %s: %s", snakemake.rule, exc.code)
            elif exc.code not in (0, None):
                logging.error("rule %s exited with code %s", snakemake.rule, exc.code)
            raise
        except BaseException:
            logging.exception("rule %s failed", snakemake.rule)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def offline_hub() -> None:
    """Evaluation and judging read staged local files only; never reach for the hub from a job."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def confine_enabled(config: dict | None) -> bool:
    """``sandbox.confine_jobs`` (default true)."""
    sandbox = (config or {}).get("sandbox") or {}
    return bool(sandbox.get("confine_jobs", True))


@contextlib.contextmanager
def confined_job(snakemake, *, keys: tuple[str | None, ...] | list[str | None] = (), network: bool = False):
    """Like :func:`logged`, for a job that reads what an agent left: the environment keeps no API key but
    ``keys`` (and proxy settings only when ``network``), and the script re-runs itself read-only except its
    outputs and log (:func:`posttrainbench.confine.confine_job`). The unconfined process exits with the
    confined run's exit code once its outputs are in place; the body runs in the confined process only."""
    from .confine import confine_job

    with logged(snakemake) as log:
        code = confine_job(
            outputs=list(snakemake.output), log_files=list(snakemake.log), inputs=list(snakemake.input),
            keys=[k for k in keys if k], network=network, enabled=confine_enabled(snakemake.config), log=log,
        )
        if code is not None:
            raise SystemExit(code)
        yield log
