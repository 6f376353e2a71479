"""The code sandbox that runs model-written programs for scoring: real bubblewrap, real HumanEval items."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from posttrainbench import benchmarks as bm
from posttrainbench.code_sandbox import (CodeExecutionSettings, CodeSandbox, CodeSandboxError, Program,
                                         apptainer_argv)
from posttrainbench.evaluation import InfrastructureError

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

ROOT = Path(__file__).resolve().parents[1]
CALLS_F = "assert untrusted_function('f')() == 1\n"


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return bm._humaneval_records()[0]


@pytest.fixture(scope="module")
def sandbox() -> CodeSandbox:
    return CodeSandbox(CodeExecutionSettings(backend="bubblewrap", timeout_seconds=5, memory_mb=512, processes=16))


def _run(sandbox: CodeSandbox, programs: dict[str, Program]) -> dict:
    return dict(zip(programs, sandbox.run(list(programs.values()))))


def test_every_canonical_solution_passes(problems, sandbox):
    results = bm.humaneval_results([(p, p["canonical_solution"]) for p in problems], sandbox.settings)
    failed = [(p["task_id"], r.detail) for p, r in zip(problems, results) if not r.passed]
    assert len(results) == 164 and not failed


def test_wrong_and_broken_completions_fail(problems):
    problem = problems[0]
    assert bm.humaneval_passes(problem, problem["canonical_solution"], timeout=5)
    assert not bm.humaneval_passes(problem, "    return not True\n", timeout=5)
    assert not bm.humaneval_passes(problem, "    return (\n", timeout=5)


def test_programs_see_nothing_of_the_host(sandbox, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    os.environ["PTB_TEST_SECRET_KEY"] = "sk-secret"
    test_set = Path(bm.__file__).parent  # any project file; staged test sets live in the project tree too
    reads = [str(ROOT / "README.md"), str(secret), str(Path(sys.prefix) / "pyvenv.cfg"),
             str(test_set / "benchmarks.py"), "/etc/passwd", "/proc/self/environ", "/root/.bashrc"]
    probe = f"""
import os, socket
def env():
    return sorted(os.environ)
def reads():
    out = []
    for path in {reads!r}:
        try:
            open(path).read(); out.append(path)
        except OSError:
            pass
    return out
def writes():
    out = []
    for path in ['/usr/x', '/ptb/x', '/x', {str(tmp_path / 'x')!r}, {str(ROOT / 'x')!r}]:
        try:
            open(path, 'w').write('x'); out.append(path)
        except OSError:
            pass
    open('own-scratch.txt', 'w').write('fine')
    return out
def network():
    out = []
    for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:
        try:
            socket.create_connection(address, timeout=1); out.append(address[0])
        except OSError:
            pass
    return out
def ids():
    return [os.getuid(), os.getgid(), os.geteuid()]
"""
    check = """
r = {name: untrusted_function(name)() for name in ('env', 'reads', 'writes', 'network', 'ids')}
assert False, r
"""
    try:
        result = sandbox.run([Program(probe, check)])[0]
    finally:
        del os.environ["PTB_TEST_SECRET_KEY"]
        listener.close()
    seen = eval(result.detail.split("AssertionError: ", 1)[1])  # the checker's own report of the probe
    # Python itself sets LC_CTYPE (locale coercion) in an empty environment; nothing else is there.
    assert set(seen["env"]) <= {"LC_CTYPE"}
    assert seen["reads"] == [] and seen["writes"] == [] and seen["network"] == []
    assert 0 not in seen["ids"]
    assert not (tmp_path / "x").exists() and not (ROOT / "x").exists()


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_daemons_and_fork_bombs_are_killed_after_each_program(sandbox):
    marker = f"{time.time_ns() % 10**9}.5"
    daemon = textwrap.dedent(f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv('/bin/sleep', ['sleep', '{marker}'])
            os._exit(0)
        def f():
            return 1
    """)
    fork_bomb = textwrap.dedent("""
        import os
        def f():
            n = 0
            while n < 10000:
                try:
                    if os.fork() == 0:
                        while True:
                            pass
                    n += 1
                except OSError:
                    return n
            return n
    """)
    # After a program, only the next program and its checker are alive in the sandbox.
    census = textwrap.dedent("""
        import os
        def f():
            alive = 0
            for pid in range(2, 4096):
                try:
                    os.kill(pid, 0)
                    alive += 1
                except OSError:
                    pass
            return alive
    """)
    results = _run(sandbox, {
        "daemon": Program(daemon, CALLS_F),
        "census after daemon": Program(census, "assert untrusted_function('f')() == 2\n"),
        "fork bomb": Program(fork_bomb, "n = untrusted_function('f')()\nassert n < 16, n\n"),
        "census after bomb": Program(census, "assert untrusted_function('f')() == 2\n"),
    })
    assert all(r.passed for r in results.values()), results
    assert _host_processes_with(marker) == []


def test_time_and_memory_limits(sandbox):
    results = _run(sandbox, {
        "loop": Program("while True:\n    pass\n", CALLS_F),
        "hog": Program("def f():\n    x = bytearray(1 << 30)\n    return 1\n", CALLS_F),
        "after": Program("def f():\n    return 1\n", CALLS_F),
    })
    assert results["loop"].status == "timeout"
    assert not results["hog"].passed and "MemoryError" in results["hog"].detail
    assert results["after"].passed


@pytest.mark.parametrize("completion", [
    # an object equal to anything
    "    class Any:\n        def __eq__(self, other):\n            return True\n    return Any()\n",
    # a builtin subclass overriding __eq__
    "    class S(str):\n        def __eq__(self, other):\n            return True\n    return S('x')\n",
    # a list holding one
    "    class I(int):\n        __eq__ = lambda self, other: True\n    return [I(1)]\n",
    # leaving before the test runs
    "    pass\nimport sys\nsys.exit(0)\n",
    "    pass\nimport os\nos._exit(0)\n",
    "    import os\n    os._exit(0)\n",
    # patching builtins the test relies on
    "    pass\nimport builtins\nbuiltins.AssertionError = type('Nothing', (BaseException,), {})\n"
    "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n",
    # the supervisor cannot be stopped from inside
    "    pass\nimport os, signal\nfor s in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n    os.kill(1, s)\n",
])
def test_gaming_the_check_fails(problems, completion):
    problem = problems[0]  # has_close_elements: returns a bool
    assert not bm.humaneval_passes(problem, completion, timeout=5)


def test_a_correct_program_still_passes_after_an_attack_in_its_batch(problems, sandbox):
    problem = problems[0]
    attack = "    import os, signal\n    os.kill(1, signal.SIGKILL)\n    os.kill(-1, signal.SIGKILL)\n    return True\n"
    results = bm.humaneval_results([(problem, attack), (problem, problem["canonical_solution"])], sandbox.settings)
    assert not results[0].passed and results[1].passed


def test_works_nested_in_a_bubblewrap_sandbox(tmp_path):
    script = tmp_path / "nested.py"
    script.write_text(textwrap.dedent("""
        import json
        from posttrainbench.code_sandbox import CodeExecutionSettings, CodeSandbox, Program
        sandbox = CodeSandbox(CodeExecutionSettings(backend="bubblewrap", timeout_seconds=5))
        ok = Program("def f():\\n    return 1\\n", "assert untrusted_function('f')() == 1\\n")
        peek = Program("def f():\\n    return open('/etc/hostname').read()\\n", "assert untrusted_function('f')()\\n")
        print(json.dumps([r.passed for r in sandbox.run([ok, peek])]))
    """))
    outer = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-user",
             "--unshare-pid", "--", sys.executable, str(script)]
    done = subprocess.run(outer, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, False]


def test_a_missing_backend_is_an_infrastructure_fault(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(CodeSandboxError, match="bwrap is not installed"):
        CodeSandbox(CodeExecutionSettings(backend="bubblewrap"))
    with pytest.raises(CodeSandboxError, match="neither apptainer"):
        CodeSandbox(CodeExecutionSettings(backend="auto"))
    assert issubclass(CodeSandboxError, InfrastructureError)


def test_a_sandbox_that_cannot_start_fails_the_evaluate_job(tmp_path, monkeypatch, tiny_model_dir):
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    from posttrainbench import evaluation, scoring_jobs
    from posttrainbench.cells import Cell

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started before the code sandbox was checked")

    # The sandbox is checked before the model is loaded: no generation time is spent on a cell it cannot score.
    monkeypatch.setattr(evaluation, "open_engine", no_generation)
    staged = tmp_path / "humaneval"
    bm.stage_benchmark("humaneval", staged)
    with pytest.raises(CodeSandboxError, match="did not start.*Permission denied"):
        evaluation.evaluate_checkpoint(tiny_model_dir, "humaneval", staged, limit=2, max_tokens=8, device="cpu",
                                       base_dir=tiny_model_dir, templates="project",
                                       code_execution={"backend": "bubblewrap"})
    # Through the evaluate job: the error propagates, no failed-cell record is written.
    (tmp_path / "run.json").write_text(json.dumps({"status": "ok", "final_model": str(tiny_model_dir)}))
    out = tmp_path / "eval.json"
    with pytest.raises(CodeSandboxError, match="did not start.*Permission denied"):
        scoring_jobs.evaluate_cell(Cell("a", "m", "humaneval", 1), run_json=tmp_path / "run.json",
                                   benchmark_dir=staged, base_dir=tiny_model_dir,
                                   options={"backend": "hf", "device": "cpu", "limit": 2,
                                            "templates": {"use": "project"},
                                            "per_benchmark": {"humaneval": {"max_tokens": 8}}},
                                   out_json=out, sandbox={"backend": "bubblewrap"})
    assert not out.exists()


def test_apptainer_command_line():
    argv = apptainer_argv("/usr/bin/apptainer", "/images/eval.sif")
    assert argv[:2] == ["/usr/bin/apptainer", "exec"]
    for flag in ("--containall", "--cleanenv", "--no-home"):
        assert flag in argv
    assert argv[argv.index("--net"):argv.index("--net") + 3] == ["--net", "--network", "none"]
    image_at = argv.index("/images/eval.sif")
    assert argv[image_at + 1:] == ["python3", "-I", "-S", "/ptb/code_sandbox_inside.py", "supervise"]
    bind = argv[argv.index("--bind") + 1]
    assert bind.endswith(":/ptb/code_sandbox_inside.py:ro")
    with pytest.raises(CodeSandboxError, match="sandbox.image"):
        apptainer_argv("apptainer", None)


def test_settings_follow_the_sandbox_config():
    settings = CodeExecutionSettings.from_config({"memory_mb": 256}, {"backend": "none", "image": "x.sif"},
                                                 timeout_seconds=3)
    assert (settings.backend, settings.image, settings.memory_mb, settings.timeout_seconds) == ("none", "x.sif", 256, 3.0)
    assert CodeExecutionSettings.from_config({"backend": "bubblewrap"}, {"backend": "none"}).backend == "bubblewrap"
    with pytest.raises(CodeSandboxError, match="unknown key"):
        CodeExecutionSettings.from_config({"memroy_mb": 1}, {})


def test_an_exception_that_ends_iteration_fails_the_program(sandbox):
    """StopIteration raised by the program inside the test's map() would end the test's loop early, not fail it."""
    test = "for value in map(untrusted_function('f'), [1, 2]):\n    assert value == 0\n"
    programs = {
        "stop": Program("def f(x):\n    raise StopIteration\n", test),
        "stop_async": Program("def f(x):\n    raise StopAsyncIteration\n", test),
        "value_error": Program("def f(x):\n    raise ValueError('x')\n",
                               "try:\n    untrusted_function('f')(1)\nexcept ValueError:\n    pass\n"),
        "honest": Program("def f(x):\n    return 0\n", test),
    }
    results = _run(sandbox, programs)
    assert not results["stop"].passed and "StopIteration" in results["stop"].detail
    assert not results["stop_async"].passed
    assert results["value_error"].passed, results["value_error"].detail  # a builtin exception a test expects
    assert results["honest"].passed


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["humaneval", "gsm8k"])
def test_evaluation_helper_scores_inside_a_sandboxed_agent(tmp_path, tiny_model_dir, benchmark):
    """The copy of the harness in the agent's workspace runs for real inside the agent's bubblewrap sandbox
    (HumanEval programs under the agent's own confinement), on the base model and on a checkpoint that adds a
    pad token."""
    from posttrainbench.agents.runner import run_cell
    from posttrainbench.cells import Cell

    bench = tmp_path / "bench"
    bm.stage_benchmark(benchmark, bench)
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent("""
        import json, os, shutil, subprocess, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(os.environ["PTB_BASE_MODEL"])
        model = AutoModelForCausalLM.from_pretrained(os.environ["PTB_BASE_MODEL"])
        tok.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tok))
        model.save_pretrained("final_model")
        tok.save_pretrained("final_model")
        for model in (os.environ["PTB_BASE_MODEL"], "final_model"):
            subprocess.run([sys.executable, "evaluation/evaluate.py", "--model", model, "--limit", "2"], check=True)
    """))
    spec = {"type": "command", "command": [sys.executable, "agent.py"], "files": [str(script)]}
    config = {"evaluation": {"device": "cpu", "dtype": "float32", "batch_size": 2,
                             "per_benchmark": {benchmark: {"max_tokens": 8}}}}
    run_dir = tmp_path / "run"
    record = run_cell(Cell("helper", "tiny", benchmark, 1), spec, run_dir=run_dir, base_dir=tiny_model_dir,
                      instruct_dir=None, train_data=None, budget={"hours": 0.1, "gpus": 0, "grace_seconds": 1},
                      threads=2, config=config, benchmark_dir=bench,
                      sandbox_config={"backend": "bubblewrap", "network": "none",
                                      "eval_helper": {"enabled": True, "limit": 3}})
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert record["exit_code"] == 0, json.dumps(trace[-20:])[-3000:]
    stdout = "\n".join(e["text"] for e in trace if e["type"] == "stdout")
    results, rest = [], stdout
    while "{\n" in rest:  # the helper prints one indented JSON object per run
        start = rest.index("{\n")
        end = rest.index("\n}", start) + 2
        results.append(json.loads(rest[start:end]))
        rest = rest[end:]
    assert len(results) == 2
    for result in results:
        assert result["n"] == 2 and 0 <= result["score"] <= 1
    assert results[1]["tokenizer"]["added_tokens"] == [{"id": 512, "content": "<|pad|>"}]
