"""Whether the package inside an Apptainer image is the checkout's.

An image copies ``src/`` when it is built (containers/eval.def, containers/judge.def) and records, in
:data:`RECORD`, the package version and a digest of that source tree. A job that starts inside the
image compares the record with the checkout it was launched from and stops, in one line, when they
differ: a stale image would otherwise run older code without notice. Outside an image (no record) the
check does nothing.

Build time (run in the definition's ``%post``)::

    python -m posttrainbench.image_check record --image judge --source /opt/ptb/src/posttrainbench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from .io import atomic_write_json

RECORD = Path("/opt/ptb/package-record.json")
IGNORED_DIRS = {"__pycache__"}
IGNORED_SUFFIXES = (".pyc", ".pyo")


class ImageMismatch(SystemExit):
    """The image's package is not the checkout's. A SystemExit: Python prints just the one-line message."""


def _files(root: Path) -> list[Path]:
    found = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        for name in names:
            if not name.endswith(IGNORED_SUFFIXES):
                found.append(Path(directory, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def source_digest(root: str | os.PathLike) -> str:
    """sha256 over every file of a package's source tree (relative path and content), bytecode excluded."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no package source tree at {root}")
    total = hashlib.sha256()
    for path in _files(root):
        total.update(path.relative_to(root).as_posix().encode() + b"\0")
        total.update(hashlib.sha256(path.read_bytes()).digest())
    return total.hexdigest()


def package_version(source: Path) -> str:
    """``__version__`` as written in the tree's ``__init__.py`` (read, not imported)."""
    for line in (source / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def write_record(image: str, source: Path, installed: Path, out: Path = RECORD) -> dict:
    """Record the copied source tree, after checking that the installed package holds all of it, byte for
    byte (a file missing from the installed package, e.g. data left out of package-data, fails the build)."""
    for path in _files(source):
        relative = path.relative_to(source)
        copy = installed / relative
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            raise SystemExit(f"the installed package at {installed} lacks {relative} of {source} "
                             f"(or holds another version of it): the image would run other code than its source")
    record = {"image": image, "package": "posttrainbench", "version": package_version(source),
              "source_sha256": source_digest(source)}
    atomic_write_json(out, record)
    return record


def check_image_package(checkout_source: str | os.PathLike, record: str | os.PathLike | None = None) -> dict | None:
    """Inside an image (``record``, by default :data:`RECORD`, exists): raise :class:`ImageMismatch` unless
    the checkout's source tree is the one the image was built from. Returns the record, or None outside an
    image."""
    record, checkout_source = Path(record or RECORD), Path(checkout_source)
    if not record.is_file():
        return None
    built = json.loads(record.read_text())
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER") \
        or f"the {built.get('image', '?')} image"
    if not checkout_source.is_dir():
        raise ImageMismatch(f"{image} holds posttrainbench {built.get('version')} but the checkout's source "
                            f"{checkout_source} is not visible inside it: cannot tell whether they agree")
    digest = source_digest(checkout_source)
    if digest != built.get("source_sha256"):
        raise ImageMismatch(
            f"{image} holds posttrainbench {built.get('version')} (source sha256 "
            f"{str(built.get('source_sha256'))[:12]}) but the checkout {checkout_source} is "
            f"{package_version(checkout_source)} (source sha256 {digest[:12]}): rebuild the image "
            f"(docs/hpc.md, Images)")
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posttrainbench.image_check", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="at image build time: record the copied source tree")
    record.add_argument("--image", required=True)
    record.add_argument("--source", type=Path, required=True, help="the source tree the image copied")
    record.add_argument("--installed", type=Path, help="the installed package (default: the one imported)")
    record.add_argument("--out", type=Path, default=RECORD)
    check = commands.add_parser("check", help="compare a checkout's source tree with the record")
    check.add_argument("source", type=Path)
    check.add_argument("--record", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        installed = args.installed or Path(__import__("posttrainbench").__file__).parent
        print(json.dumps(write_record(args.image, args.source, installed, args.out)))
    else:
        built = check_image_package(args.source, args.record)
        print("no image record" if built is None else f"the image holds this checkout's package ({built['version']})")


if __name__ == "__main__":
    sys.exit(main())
