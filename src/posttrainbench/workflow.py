"""Glue for the scripts that Snakemake rules run: logging into the rule's log file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path


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
            yield logging.getLogger(f"posttrainbench.rule.{snakemake.rule}")
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
