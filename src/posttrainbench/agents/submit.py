"""Built-in ``base`` / ``instruct`` agents: submit a staged model unchanged as ``final_model/``."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def _link_or_copy(src: str, dst: str) -> None:
    # Hard links make submitting a multi-GB model free; nothing writes to these files afterwards.
    # Collection accepts such links only for these recipes, and only to the staged model's own files.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def submit(src: Path, dst: Path) -> None:
    if not (src / "config.json").is_file():
        raise SystemExit(f"no model at {src} (config.json missing)")
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("ptb_stage.json", ".snakemake_timestamp"),
                    copy_function=_link_or_copy)
    tmp.rename(dst)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--dst", type=Path, required=True)
    args = parser.parse_args(argv)
    submit(args.src, args.dst)
    print(f"submitted {args.src} as {args.dst}")


if __name__ == "__main__":
    main()
