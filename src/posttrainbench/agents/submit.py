"""Built-in ``base`` / ``instruct`` agents: submit a staged model unchanged as ``final_model/``."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def submit(src: Path, dst: Path) -> None:
    if not (src / "config.json").is_file():
        raise SystemExit(f"no model at {src} (config.json missing)")
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("ptb_stage.json"))
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
