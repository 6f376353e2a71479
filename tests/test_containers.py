"""The Apptainer definitions (containers/*.def): parsed with spython, linted, and their version pins
checked against envs/. Building needs Apptainer and the internet, neither of which exists here."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from spython.main.parse.parsers import SingularityParser
from spython.main.parse.writers import DockerWriter

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("agent", "eval", "judge")
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)")


def pins(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        for line in (ROOT / "envs" / name).read_text().splitlines():
            match = PIN.match(line.strip())
            if match:
                found[match.group(1).lower()] = match.group(2)
    return found


ALL_PINS = pins("pipeline.txt", "data.txt", "vllm.txt", "eval-gpu.txt")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def base_image_pins() -> dict[str, str]:
    """envs/base-images.txt: ``name:tag`` -> ``sha256:<digest>`` or ``tag-only``."""
    rows = {}
    for line in (ROOT / "envs" / "base-images.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tag, pin = line.split()
            assert pin == "tag-only" or DIGEST.fullmatch(pin), f"envs/base-images.txt: {tag} has pin {pin!r}"
            rows[tag] = pin
    return rows


def parse(image: str) -> SingularityParser:
    return SingularityParser(str(ROOT / "containers" / f"{image}.def"))


def recipe(image: str):
    (only,) = parse(image).recipe.values()
    return only


def base_tag(image: str) -> str:
    """The ``name:tag`` a definition's base stands for: its own tag, or its digest's row in the pin file."""
    header = recipe(image).fromHeader
    name, at, digest = header.partition("@")
    if at:
        (tag,) = [t for t, pin in base_image_pins().items() if pin == digest and t.rpartition(":")[0] == name]
        return tag
    return header


def section(image: str, name: str) -> str:
    """A section's raw text (spython keeps %test only as a script name)."""
    text = (ROOT / "containers" / f"{image}.def").read_text()
    match = re.search(rf"^%{name}\n(.*?)(?=^%|\Z)", text, flags=re.M | re.S)
    assert match, f"{image}.def has no %{name} section"
    return match.group(1)


def post_commands(image: str) -> str:
    """%post as one string, continuation lines joined."""
    return "\n".join(recipe(image).install).replace("\\\n", " ")


@pytest.mark.parametrize("image", IMAGES)
def test_definition_parses_and_is_complete(image):
    rec = recipe(image)
    assert f"org.posttrainbench.image {image}" in rec.labels
    assert rec.install and rec.environ and rec.cmd == 'exec "$@"'
    assert rec.test, f"{image}.def has no %test section"
    for entry in rec.files:
        source = entry.split()[0]
        assert (ROOT / source).exists(), f"{image}.def copies {source}, which is not in the repository"
    # spython can also write the recipe as a Dockerfile: a second, independent reading of every section.
    dockerfile = DockerWriter(parse(image).recipe).convert()
    assert dockerfile.startswith(f"FROM {rec.fromHeader}") and "RUN " in dockerfile


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_is_pinned(image):
    """By digest (``name@sha256:...``, listed with its tag in envs/base-images.txt), or by a fixed tag the
    pin file lists as ``tag-only``: its digest could not be resolved where the definition was written."""
    header, pinned = recipe(image).fromHeader, base_image_pins()
    name, at, digest = header.partition("@")
    if at:
        assert DIGEST.fullmatch(digest), f"{image}.def: {header!r} is not name@sha256:<64 hex>"
        assert ":" not in name, f"{image}.def: {header!r} names a tag and a digest (Apptainer takes one)"
        rows = [tag for tag, pin in pinned.items() if pin == digest]
        assert len(rows) == 1 and rows[0].rpartition(":")[0] == name, \
            f"{image}.def: digest {digest} has no single {name}:<tag> row in envs/base-images.txt"
    else:
        name, _, tag = header.rpartition(":")
        assert name and tag and tag != "latest", f"{image}.def: base image {header!r} must carry a fixed tag"
        assert pinned.get(header) == "tag-only", \
            f"{image}.def: base {header!r} is neither a digest nor a tag-only row of envs/base-images.txt"


def test_base_image_pin_file_has_no_stale_rows():
    used = {base_tag(image) for image in IMAGES}
    assert set(base_image_pins()) == used


@pytest.mark.parametrize("image", ["eval", "judge"])
def test_image_records_its_package_for_the_job_start_check(image):
    """The image installs the copied src/ and records it (posttrainbench.image_check) after the install;
    its %test runs the check against the copy."""
    from posttrainbench.image_check import RECORD

    rec = recipe(image)
    assert "src /opt/ptb/src" in rec.files
    commands = post_commands(image)
    install = commands.index("pip install --no-cache-dir --no-deps /opt/ptb")
    record = commands.index(f"cd / && python -m posttrainbench.image_check record --image {image} "
                            "--source /opt/ptb/src/posttrainbench")
    assert install < record
    assert str(RECORD).startswith("/opt/ptb/")
    assert "cd / && python -m posttrainbench.image_check check /opt/ptb/src/posttrainbench" in section(image, "test")


def test_judge_image_reads_parquet_and_arrow():
    """The judge scans Parquet and Arrow files through pyarrow; without it they would go unread."""
    assert "import pyarrow" in (ROOT / "src" / "posttrainbench" / "judge" / "files.py").read_text()
    assert re.search(r"-c /opt/ptb/envs/pipeline\.txt [^\n]*\bpyarrow\b", post_commands("judge"))
    assert "pyarrow" in ALL_PINS
    assert "pyarrow.parquet" in section("judge", "test") and "pyarrow.ipc" in section("judge", "test")


@pytest.mark.parametrize("image", IMAGES)
def test_every_pip_install_is_pinned_by_envs(image):
    """Each package a definition installs is pinned there with the version envs/ pins, or comes from a
    requirements/constraints file of envs/."""
    commands = post_commands(image)
    installs = [c for c in re.split(r"\n|&&", commands) if re.search(r"\bpip install\b", c)]
    assert installs
    for command in installs:
        words = command.split()[command.split().index("install") + 1:]
        files = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-r", "-c")]
        for path in files:
            assert path.startswith("/opt/ptb/"), f"{image}.def: {path} is not a copied envs/ file"
        constrained = bool(files)
        skip = False
        for i, word in enumerate(words):
            if skip or word.startswith("-") or word.startswith("/") or word.startswith("http"):
                skip = word in ("-r", "-c", "--index-url")
                continue
            match = PIN.match(word)
            if match:
                name, version = match.group(1).lower(), match.group(2)
                assert ALL_PINS.get(name) == version, f"{image}.def installs {word}; envs/ pins {ALL_PINS.get(name)}"
            else:
                assert constrained, f"{image}.def installs {word!r} unpinned and without an envs/ constraints file"


def test_gpu_and_cpu_pins_agree():
    vllm = pins("eval-gpu.txt")["vllm"]
    assert base_tag("eval") == f"vllm/vllm-openai:v{vllm}"
    assert f"vllm.__version__ == '{vllm}'" in section("eval", "test")
    assert pins("gpu-vllm.txt")["vllm"] == vllm, "the CUDA eval image runs the vLLM release verified on a GPU"
    torch = pins("pipeline.txt")["torch"]
    assert f"torch=={torch} --index-url https://download.pytorch.org/whl/cu128" in post_commands("agent")
    assert base_tag("agent").startswith("nvidia/cuda:12.8.")
    assert f'"$CUDA_VERSION" = {base_tag("agent").split(":")[1].split("-")[0]}' in section("agent", "test")
    assert f"torch=={torch} --index-url https://download.pytorch.org/whl/cpu" in post_commands("judge")


def test_agent_clis_are_installed_from_the_pinned_lock():
    package = json.loads((ROOT / "envs" / "agents" / "package.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"envs/agents/package.json: {name} {version} is not exact"
    files = " ".join(recipe("agent").files)
    assert "envs/agents/package.json" in files and "envs/agents/package-lock.json" in files
    assert "npm install" in post_commands("agent") and "npm install -g" not in post_commands("agent")


def test_rules_run_in_the_images():
    """Evaluation and judging declare their images; the agent rule starts its own sandbox instead."""
    assert 'container:\n        "containers/eval.sif"' in (ROOT / "rules" / "evaluate.smk").read_text()
    assert 'container:\n        "containers/judge.sif"' in (ROOT / "rules" / "judge.smk").read_text()
    assert "container:" not in (ROOT / "rules" / "agent.smk").read_text()


def test_built_images_and_build_caches_are_not_tracked():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["containers/agent.sif", "containers/eval.sif", "judge.sif", ".apptainer-cache/blob", ".apptainer-tmp/x"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == paths
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", "containers/agent.def"], cwd=ROOT).returncode == 1
