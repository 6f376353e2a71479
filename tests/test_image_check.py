"""The image-package check: an image records the source tree it was built from; a job started inside it
stops in one line when the checkout it runs for is another."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrainbench import image_check, workflow
from posttrainbench.image_check import ImageMismatch, check_image_package, source_digest, write_record

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "posttrainbench"


def copy_tree(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name / "posttrainbench"
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@pytest.fixture
def built(tmp_path):
    """A fake image: the source as copied at build time, an installed copy, and the record written from them."""
    source, installed = copy_tree(tmp_path, "image-src"), copy_tree(tmp_path, "site-packages")
    record = tmp_path / "package-record.json"
    write_record("judge", source, installed, record)
    return record


def test_record_names_version_and_digest(built):
    record = json.loads(built.read_text())
    assert record == {"image": "judge", "package": "posttrainbench", "version": "0.1.0",
                      "source_sha256": source_digest(built.parent / "image-src" / "posttrainbench")}


def test_matching_checkout_passes(built, tmp_path):
    checkout = copy_tree(tmp_path, "checkout")
    (checkout / "__pycache__").mkdir(exist_ok=True)
    (checkout / "__pycache__" / "io.cpython-311.pyc").write_bytes(b"bytecode differs per interpreter")
    assert check_image_package(checkout, built)["version"] == "0.1.0"


@pytest.mark.parametrize("change", ["edit", "add", "remove", "rename"])
def test_differing_checkout_fails_in_one_line(built, tmp_path, monkeypatch, change):
    monkeypatch.setenv("APPTAINER_CONTAINER", "/cluster/ptb/containers/judge.sif")
    checkout = copy_tree(tmp_path, "checkout")
    if change == "edit":
        with open(checkout / "io.py", "a") as handle:
            handle.write("\n# newer\n")
    elif change == "add":
        (checkout / "judge" / "new_check.py").write_text("")
    elif change == "remove":
        (checkout / "chat_templates" / "chatml.jinja").unlink()
    else:
        (checkout / "io.py").rename(checkout / "io2.py")
    with pytest.raises(ImageMismatch) as caught:
        check_image_package(checkout, built)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("/cluster/ptb/containers/judge.sif holds posttrainbench 0.1.0 (source sha256 "
                              f"{source_digest(tmp_path / 'image-src' / 'posttrainbench')[:12]}) but the checkout {checkout} is 0.1.0 (source sha256 "
                              f"{source_digest(checkout)[:12]})")
    assert "rebuild the image" in message


def test_no_record_means_not_in_an_image(tmp_path):
    assert check_image_package(tmp_path / "nowhere", tmp_path / "no-record.json") is None


def test_checkout_not_visible_in_the_image_fails(built, tmp_path):
    with pytest.raises(ImageMismatch, match="not visible inside it"):
        check_image_package(tmp_path / "unmounted" / "posttrainbench", built)


def test_record_refuses_an_installed_package_missing_source_files(tmp_path):
    """What pip leaves out (data missing from package-data) would make the image run other code."""
    source, installed = copy_tree(tmp_path, "image-src"), copy_tree(tmp_path, "site-packages")
    (installed / "benchmarks" / "data" / "published_artifacts.json").unlink()
    with pytest.raises(SystemExit, match=r"lacks benchmarks/data/published_artifacts\.json"):
        write_record("eval", source, installed, tmp_path / "record.json")
    assert not (tmp_path / "record.json").exists()


def test_job_start_stops_in_one_line_inside_a_stale_image(built, tmp_path, monkeypatch):
    """posttrainbench.workflow.logged, where every rule's script starts, runs the check against the
    checkout beside the script's directory; the rule log gets the same one line."""
    checkout_root = tmp_path / "checkout-root"
    shutil.copytree(SOURCE, checkout_root / "src" / "posttrainbench",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (checkout_root / "scripts").mkdir()
    monkeypatch.setattr(image_check, "RECORD", built)
    log = tmp_path / "logs" / "judge.log"
    job = SimpleNamespace(log=[str(log)], rule="judge", scriptdir=str(checkout_root / "scripts"))
    with workflow.logged(job):
        pass  # the image's package is the checkout's
    with open(checkout_root / "src" / "posttrainbench" / "io.py", "a") as handle:
        handle.write("\n# newer\n")
    ran = False
    with pytest.raises(ImageMismatch) as caught:
        with workflow.logged(job):
            ran = True
    assert not ran and "\n" not in str(caught.value)
    assert "rule judge: the judge image holds posttrainbench 0.1.0" in log.read_text()
    assert "Traceback" not in log.read_text()


def test_stale_image_exits_with_the_line_alone(built, tmp_path):
    """The process a stale image's job runs ends with status 1 and only the one line on stderr."""
    checkout = copy_tree(tmp_path, "checkout")
    (checkout / "io.py").write_text("# another version\n")
    result = subprocess.run([sys.executable, "-m", "posttrainbench.image_check", "check", str(checkout),
                             "--record", str(built)], capture_output=True, text=True, env={"PATH": "/usr/bin"})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "holds posttrainbench 0.1.0" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "posttrainbench.image_check", "check", str(tmp_path / "image-src" / "posttrainbench"),
                         "--record", str(built)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_installed_package_holds_the_whole_source_tree(tmp_path):
    """What an image's build records: pip's install of the checkout carries every file of src/posttrainbench
    (data files included, through package-data), so the image runs exactly its copied source."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copy(ROOT / "README.md", project)
    source = copy_tree(project, "src")
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(project), "-w", str(tmp_path / "wheel")], capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    (built_wheel,) = (tmp_path / "wheel").glob("posttrainbench-*.whl")
    shutil.unpack_archive(built_wheel, tmp_path / "site-packages", format="zip")
    record = write_record("eval", source, tmp_path / "site-packages" / "posttrainbench", tmp_path / "record.json")
    assert record["source_sha256"] == source_digest(source)
