"""The Apptainer definitions (containers/*.def): parsed with spython, linted, and their version pins
checked against envs/. Building needs Apptainer and the internet, neither of which exists here."""

from __future__ import annotations

import json
import re
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


def parse(image: str) -> SingularityParser:
    return SingularityParser(str(ROOT / "containers" / f"{image}.def"))


def recipe(image: str):
    (only,) = parse(image).recipe.values()
    return only


def post_commands(image: str) -> str:
    """%post as one string, continuation lines joined."""
    return "\n".join(recipe(image).install).replace("\\\n", " ")


@pytest.mark.parametrize("image", IMAGES)
def test_definition_parses_and_is_complete(image):
    rec = recipe(image)
    base, _, tag = rec.fromHeader.rpartition(":")
    assert base and tag and tag != "latest", f"{image}.def: base image {rec.fromHeader!r} must carry a fixed tag"
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
    assert recipe("eval").fromHeader == f"vllm/vllm-openai:v{vllm}"
    assert pins("gpu-vllm.txt")["vllm"] == vllm, "the CUDA eval image runs the vLLM release verified on a GPU"
    torch = pins("pipeline.txt")["torch"]
    assert f"torch=={torch} --index-url https://download.pytorch.org/whl/cu128" in post_commands("agent")
    assert "cuda:12.8" in recipe("agent").fromHeader
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
