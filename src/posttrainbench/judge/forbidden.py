"""Forbidden API check: hosted-model API use found from how a client is built and where it points.

* **Python** (``.py``, notebooks' code cells, and files recognised by content: a Python shebang, or text without
  a known data extension that parses as Python with imports or calls) is read with :mod:`ast`. Constructing a
  hosted SDK client (:data:`CLIENTS`: ``openai.OpenAI``/``AsyncOpenAI``/``AzureOpenAI``, ``anthropic.Anthropic``,
  ``google.genai.Client``, ``genai.configure``, Mistral, Cohere, Groq, Together, LangChain's wrappers, Hugging
  Face's ``InferenceClient``, ``litellm.completion``..., whatever its other arguments) is a finding when its endpoint
  is its default hosted one or a host that is neither loopback nor the agent's own endpoint (nor
  ``judge.forbidden.allowed_hosts``). The endpoint is the ``base_url``-like argument, resolved through literals,
  f-strings, concatenation, variables, function defaults, argparse defaults and ``os.environ`` defaults; when none
  is given, the SDK's own variable (``OPENAI_BASE_URL``...) as set anywhere in the workspace's code, ``.env`` files
  or the transcript. An endpoint that cannot be resolved is reported (``unresolved``) but does not fail the check
  alone. Any string literal in code naming a hosted API host (``judge.forbidden.hosts``) is a finding too: raw HTTP
  with requests, httpx, urllib or aiohttp goes there.
* **Shell, JavaScript/TypeScript, and Python that does not parse**: a careful line scan, comments dropped: a
  hosted host on a code line, a JS SDK client (``new OpenAI(...)``) without a local ``baseURL``.
* **Transcript**: a hosted host on a line that also runs an HTTP client (``curl``, ``wget``, ``requests.``...).
* **Egress** (network ``proxy``): every host contacted, matched against ``judge.forbidden.hosts``.

Never evidence by itself: naming a key variable (``OPENAI_API_KEY``), where a key is read from, installed libraries
(files a pip/conda record vouches for, npm packages its lock lists), the coding-agent CLI's own session files.
"""

from __future__ import annotations

import ast
import fnmatch
import ipaddress
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

from ..agents.fswalk import Walk, open_regular, read_chunks
from . import files

MAX_CODE_FILE_BYTES = 4 << 20
# Archives up to this size are opened and their text lines scanned (larger ones are listed in the evidence).
MAX_ARCHIVE_BYTES = 64 << 20
NOT_CODE_CONTENT = ("weights", "npy", "parquet", "arrow", "arrow-stream")
MAX_TRACE_LINE_BYTES = 1 << 20
_ENV_HINT = re.compile(r"BASE_URL|API_BASE|ENDPOINT|API_URL")
MAX_FILES = 200_000
MAX_HELD_BYTES = 2 << 30  # code text held for parsing at once
PYTHON_EXTENSIONS = ("py", "pyw", "pyi")
SHELL_EXTENSIONS = ("sh", "bash", "zsh", "ksh")
JS_EXTENSIONS = ("js", "mjs", "cjs", "ts", "mts", "cts", "jsx", "tsx")
ENV_EXTENSIONS = ("env",)
# Data and documents: never code, whatever they contain (a README may quote a hosted endpoint).
DATA_EXTENSIONS = ("json", "jsonl", "csv", "tsv", "parquet", "arrow", "md", "rst", "html", "yaml", "yml", "toml",
                   "cfg", "ini", "lock", "log", "safetensors", "bin", "pt", "gguf", "db", "sqlite", "png", "jpg",
                   "pdf", "gz", "zip", "tar", "whl", "pyc", "so")
_NEVER_SCANNED = frozenset({"final_model", "__pycache__", ".git"})
# Folders of installed tools and caches: of no interest to a reader of the workspace (the LLM judge's context).
# This check does not skip them by name; it verifies installed files against their record instead.
SKIP_DIRS = ("final_model", "site-packages", "dist-packages", "node_modules", "__pycache__", ".git", ".cache",
             ".venv", "venv", ".npm")
# A URL whose host is an IP address and whose path is a model API's (chat, completions, messages, responses,
# embeddings, Gemini's generateContent).
_IP_API_URL = re.compile(r"(?i)\bhttps?://\[?([0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]*:[0-9a-f:]+)\]?(?::[0-9]+)?"
                         r"/[^\s'\"]*?(?:chat/completions|/completions|/messages|/responses|/embeddings|"
                         r":generateContent|:streamGenerateContent)\b")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "0.0.0.0", "host.docker.internal")


_DYNAMIC_IMPORT = frozenset({"importlib.import_module", "__import__", "builtins.__import__",
                             "importlib.__import__"})
# Functions that run a string as code.
_RUNS_CODE = frozenset({"exec", "eval", "compile", "builtins.exec", "builtins.eval", "builtins.compile"})


@dataclass(frozen=True)
class Client:
    """A hosted SDK's client: where its endpoint is given (keyword, ``a.b`` for a key inside a dict or options
    object argument), the variables it reads the endpoint from otherwise, and its default hosted host."""

    endpoint: tuple[str, ...]
    env: tuple[str, ...]
    default: str


_OPENAI = Client(("base_url",), ("OPENAI_BASE_URL",), "api.openai.com")
_AZURE = Client(("base_url", "azure_endpoint"), ("AZURE_OPENAI_ENDPOINT",), "<resource>.openai.azure.com")
_ANTHROPIC = Client(("base_url",), ("ANTHROPIC_BASE_URL",), "api.anthropic.com")
_COHERE = Client(("base_url",), ("CO_API_URL",), "api.cohere.com")
_GROQ = Client(("base_url",), ("GROQ_BASE_URL",), "api.groq.com")
_TOGETHER = Client(("base_url",), ("TOGETHER_BASE_URL",), "api.together.xyz")
_LC_OPENAI = Client(("base_url", "openai_api_base"), ("OPENAI_BASE_URL", "OPENAI_API_BASE"), "api.openai.com")
_HF = Client(("base_url", "model"), ("HF_INFERENCE_ENDPOINT",), "router.huggingface.co")
_LITELLM = Client(("api_base", "base_url"), (), "the model's provider")

CLIENTS: dict[str, Client] = {
    "openai.OpenAI": _OPENAI, "openai.AsyncOpenAI": _OPENAI, "openai.Client": _OPENAI,
    "openai.AsyncClient": _OPENAI,
    "openai.AzureOpenAI": _AZURE, "openai.AsyncAzureOpenAI": _AZURE,
    "anthropic.Anthropic": _ANTHROPIC, "anthropic.AsyncAnthropic": _ANTHROPIC, "anthropic.Client": _ANTHROPIC,
    "anthropic.AnthropicVertex": Client(("base_url",), (), "Vertex AI"),
    "anthropic.AnthropicBedrock": Client(("base_url",), (), "Amazon Bedrock"),
    "google.genai.Client": Client(("http_options.base_url",), ("GOOGLE_GEMINI_BASE_URL",),
                                  "generativelanguage.googleapis.com"),
    "google.generativeai.configure": Client(("client_options.api_endpoint",), (),
                                            "generativelanguage.googleapis.com"),
    "google.generativeai.GenerativeModel": Client((), (), "generativelanguage.googleapis.com"),
    "vertexai.init": Client(("api_endpoint",), (), "aiplatform.googleapis.com"),
    "mistralai.Mistral": Client(("server_url",), (), "api.mistral.ai"),
    "mistralai.client.MistralClient": Client(("endpoint",), (), "api.mistral.ai"),
    "cohere.Client": _COHERE, "cohere.ClientV2": _COHERE, "cohere.AsyncClient": _COHERE,
    "cohere.AsyncClientV2": _COHERE,
    "groq.Groq": _GROQ, "groq.AsyncGroq": _GROQ,
    "together.Together": _TOGETHER, "together.AsyncTogether": _TOGETHER,
    "fireworks.client.Fireworks": Client(("base_url",), (), "api.fireworks.ai"),
    "langchain_openai.ChatOpenAI": _LC_OPENAI, "langchain_openai.OpenAI": _LC_OPENAI,
    "langchain_openai.OpenAIEmbeddings": _LC_OPENAI,
    "langchain_anthropic.ChatAnthropic": Client(("base_url", "anthropic_api_url"), ("ANTHROPIC_BASE_URL",),
                                                "api.anthropic.com"),
    "langchain_google_genai.ChatGoogleGenerativeAI": Client((), (), "generativelanguage.googleapis.com"),
    "huggingface_hub.InferenceClient": _HF, "huggingface_hub.AsyncInferenceClient": _HF,
    "litellm.completion": _LITELLM, "litellm.acompletion": _LITELLM, "litellm.text_completion": _LITELLM,
    "litellm.atext_completion": _LITELLM, "litellm.embedding": _LITELLM, "litellm.responses": _LITELLM,
    "litellm.batch_completion": _LITELLM,
}
_SDK_ROOTS = frozenset(name.split(".")[0] for name in CLIENTS)
# The openai module's own client (``openai.chat.completions.create(...)``), configured by module attributes.
_OPENAI_MODULE_CALL = re.compile(r"openai\.(?:chat|completions|responses|embeddings|beta|images|audio|moderations|"
                                 r"ChatCompletion|Completion|Embedding)\b.*\.(?:create|parse|stream)\Z")
# litellm model prefixes served locally.
_LOCAL_LITELLM = ("ollama/", "ollama_chat/", "hosted_vllm/", "vllm/", "lm_studio/", "llamafile/", "huggingface/tgi")
# Python, JS and shell HTTP clients (for the transcript's line scan).
_HTTP_CLIENT = re.compile(r"\b(?:curl|wget|xh|requests\.\w+|httpx\.\w+|urlopen|urllib\.request|aiohttp|fetch|"
                          r"axios|Invoke-WebRequest|Invoke-RestMethod)\b")
_JS_CLIENT = re.compile(r"\bnew\s+(OpenAI|AzureOpenAI|Anthropic|GoogleGenerativeAI|GoogleGenAI|Groq|Mistral|"
                        r"CohereClient|Together)\s*\(")
_ENV_SETTING = re.compile(r"\b([A-Z][A-Z0-9_]*(?:BASE_URL|API_BASE|ENDPOINT|API_URL))\s*[=:]\s*([\"']?)"
                          r"([^\s\"'`;]+)\2")


def _host(entry: str) -> str:
    entry = entry.strip()
    if "://" in entry:
        try:
            return (urlparse(entry).hostname or "").lower()
        except ValueError:
            return ""
    host = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
    return host.split("/", 1)[0].strip("[]").lower()


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Policy:
    """Which hosts are hosted APIs (shell patterns) and which are exempt (loopback, the agent's own endpoint,
    ``allowed_hosts``)."""

    hosted: list[str]
    exempt: list[str]
    host_regex: re.Pattern | None = None

    def __post_init__(self) -> None:
        words = []
        for pattern in self.hosted:
            rx = re.escape(pattern).replace(r"\*", r"[a-z0-9-]+")
            words.append(rx)
        self.host_regex = re.compile(r"(?i)(?<![a-z0-9.-])(" + "|".join(words) + r")(?![a-z0-9-])") if words else None

    def exempt_host(self, host: str) -> bool:
        return is_loopback(host) or any(fnmatch.fnmatch(host, p) for p in self.exempt)

    def hosted_host(self, host: str) -> bool:
        return any(fnmatch.fnmatch(host, p) for p in self.hosted) and not self.exempt_host(host)

    def hosted_in(self, text: str) -> str | None:
        """The first hosted API host named in ``text`` and not exempt; or a public IP address in a URL to a
        model API's path (a hosted API reached by address, its name hidden)."""
        if self.host_regex is None or "." not in text:
            return None
        for match in self.host_regex.finditer(text):
            if not self.exempt_host(match.group(1).lower()):
                return match.group(1).lower()
        if "://" in text:
            for match in _IP_API_URL.finditer(text):
                try:
                    address = ipaddress.ip_address(match.group(1))
                except ValueError:
                    continue
                if address.is_global and not self.exempt_host(match.group(1)):
                    return match.group(1)
        return None


@dataclass
class Findings:
    items: list[dict] = field(default_factory=list)
    unresolved: list[dict] = field(default_factory=list)
    allowed_clients: list[dict] = field(default_factory=list)
    limit: int = 50

    def add(self, where: str, pattern: str, text: str, **extra) -> None:
        if len(self.items) < self.limit and not any(f["where"] == where and f["pattern"] == pattern
                                                    for f in self.items):
            self.items.append({"where": where, "pattern": pattern, "text": " ".join(text.split())[:200], **extra})


# ------------------------------------------------------------------------------------------------ Python


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _PythonModule:
    """What one Python source says about clients: imports, assignments, environment settings."""

    def __init__(self, tree: ast.Module, env: dict[str, list[str]]):
        self.tree = tree
        self.aliases: dict[str, str] = {}
        self.assigned: dict[str, list[ast.AST]] = {}
        self.attr_assigned: dict[str, list[ast.AST]] = {}  # "client.base_url" / "openai.base_url"
        self.arg_defaults: dict[str, list[ast.AST]] = {}  # argparse dests and function parameters
        self.env = {k: list(v) for k, v in env.items()}
        self.docstrings: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                    else:
                        self.aliases.setdefault(alias.name.split(".")[0], alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is None:
                    continue
                for target in targets:
                    self._assign(target, node.value)
            elif isinstance(node, ast.NamedExpr):
                self._assign(node.target, node.value)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                positional = args.posonlyargs + args.args
                for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
                    self.arg_defaults.setdefault(arg.arg, []).append(default)
                for arg, default in zip(args.kwonlyargs, args.kw_defaults):
                    if default is not None:
                        self.arg_defaults.setdefault(arg.arg, []).append(default)
            elif isinstance(node, ast.Call):
                self._call_settings(node)
            # Docstrings and bare string statements are comments: mentioning a host there is no use of it.
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                self.docstrings.add(id(node.value))

    def object_name(self, node: ast.AST, depth: int = 0) -> str | None:
        """The dotted name of the module, class or function ``node`` evaluates to, through imports made at run
        time (``importlib.import_module``, ``__import__``, ``sys.modules[...]``) and ``getattr`` with a name that
        resolves statically (``getattr(m, "Open" + "AI")``); None when unknown."""
        if depth > 6:
            return None
        dotted = _dotted(node)
        if dotted is not None:
            return self.qualify(dotted)
        if isinstance(node, ast.Attribute):
            owner = self.object_name(node.value, depth + 1)
            return f"{owner}.{node.attr}" if owner else None
        if isinstance(node, ast.Call) and node.args:
            func = self.object_name(node.func, depth + 1) or ""
            if func in _DYNAMIC_IMPORT:
                names = self.strings(node.args[0], depth + 1)
                return names[0] if names and len(set(names)) == 1 else None
            if func in ("getattr", "builtins.getattr") and len(node.args) >= 2:
                owner = self.object_name(node.args[0], depth + 1)
                attrs = self.strings(node.args[1], depth + 1)
                if owner and attrs and len(set(attrs)) == 1:
                    return f"{owner}.{attrs[0]}"
        if isinstance(node, ast.Subscript) and (self.object_name(node.value, depth + 1) or "") == "sys.modules":
            names = self.strings(node.slice, depth + 1)
            return names[0] if names and len(set(names)) == 1 else None
        return None

    def _assign(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.assigned.setdefault(target.id, []).append(value)
            # A module or class bound at run time: ``m = importlib.import_module("op" + "enai")``,
            # ``C = getattr(m, "OpenAI")``, ``C = openai.OpenAI``.
            if isinstance(value, (ast.Call, ast.Subscript, ast.Attribute)):
                bound = self.object_name(value)
                if bound and bound.split(".")[0] in _SDK_ROOTS:
                    self.aliases[target.id] = bound
        elif isinstance(target, ast.Attribute):
            owner = _dotted(target.value)
            if owner:
                self.attr_assigned.setdefault(f"{self.qualify(owner)}.{target.attr}", []).append(value)
                self.attr_assigned.setdefault(f"{owner}.{target.attr}", []).append(value)
        elif isinstance(target, ast.Subscript) and _dotted(target.value) in ("os.environ", "environ"):
            key = self._literal(target.slice)
            if key:
                self.env.setdefault(key, []).extend(self.strings(value) or [])
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
            for t, v in zip(target.elts, value.elts):
                self._assign(t, v)

    def _call_settings(self, node: ast.Call) -> None:
        name = _dotted(node.func) or ""
        if name.endswith("add_argument"):
            dest = None
            for arg in node.args:
                flag = self._literal(arg)
                if flag and flag.startswith("--"):
                    dest = flag[2:].replace("-", "_")
                    break
            for kw in node.keywords:
                if kw.arg == "dest":
                    dest = self._literal(kw.value) or dest
            for kw in node.keywords:
                if kw.arg == "default" and dest:
                    self.arg_defaults.setdefault(dest, []).append(kw.value)
        elif name.endswith(("environ.setdefault", "os.putenv", "putenv")) and len(node.args) >= 2:
            key = self._literal(node.args[0])
            if key:
                self.env.setdefault(key, []).extend(self.strings(node.args[1]) or [])
        elif name.endswith("environ.update") and node.args and isinstance(node.args[0], ast.Dict):
            for k, v in zip(node.args[0].keys, node.args[0].values):
                key = self._literal(k) if k is not None else None
                if key:
                    self.env.setdefault(key, []).extend(self.strings(v) or [])

    @staticmethod
    def _literal(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    def qualify(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        full = self.aliases.get(head)
        if full is None:
            return dotted
        return f"{full}.{rest}" if rest else full

    def strings(self, node: ast.AST | None, depth: int = 0) -> list[str] | None:
        """The string values ``node`` can take, or None when one of them cannot be known statically."""
        if node is None or depth > 6:
            return None
        if isinstance(node, ast.Constant):
            return [node.value] if isinstance(node.value, str) else None
        if isinstance(node, ast.JoinedStr):
            parts = [""]
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts = [p + str(value.value) for p in parts]
                    continue
                inner = self.strings(value.value, depth + 1) if isinstance(value, ast.FormattedValue) else None
                # An unknown piece after the host (a port, a path) does not hide where the URL points.
                parts = [p + i for p in parts for i in (inner or ["{}"])][:16]
            return parts
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            left = self.strings(node.left, depth + 1)
            if isinstance(node.op, ast.Mod):
                return left
            right = self.strings(node.right, depth + 1)
            if left is None:
                return None
            return [a + b for a in left for b in (right or ["{}"])][:16]
        if isinstance(node, ast.Name):
            values = self.assigned.get(node.id, []) + self.arg_defaults.get(node.id, [])
            return self._union(values, depth)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            values = self.attr_assigned.get(dotted or "", []) + self.arg_defaults.get(node.attr, [])
            return self._union(values, depth)
        if isinstance(node, ast.Call):
            name = self.qualify(_dotted(node.func) or "")
            if name in ("os.environ.get", "os.getenv", "os.environ.setdefault") and node.args:
                key = self._literal(node.args[0])
                default = node.args[1] if len(node.args) > 1 else next(
                    (kw.value for kw in node.keywords if kw.arg == "default"), None)
                known = list(self.env.get(key or "", []))
                if default is not None:
                    more = self.strings(default, depth + 1)
                    if more is None:
                        return None
                    known += more
                return known or None
            if name in ("str", "str.strip") and node.args:
                return self.strings(node.args[0], depth + 1)
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("strip", "rstrip", "lower", "format"):
                return self.strings(node.func.value, depth + 1)
            return None
        if isinstance(node, ast.Subscript):
            if _dotted(node.value) in ("os.environ",):
                key = self._literal(node.slice)
                return list(self.env.get(key or "", [])) or None
            mapping = self.mapping_value(node.value, self._literal(node.slice) or "", depth + 1)
            return mapping
        if isinstance(node, ast.IfExp):
            a, b = self.strings(node.body, depth + 1), self.strings(node.orelse, depth + 1)
            return None if a is None or b is None else a + b
        if isinstance(node, ast.BoolOp):
            out: list[str] = []
            for value in node.values:
                got = self.strings(value, depth + 1)
                if got is None:
                    return None
                out += got
            return out
        return None

    def _union(self, values: list[ast.AST], depth: int) -> list[str] | None:
        if not values:
            return None
        out: list[str] = []
        for value in values:
            got = self.strings(value, depth + 1)
            if got is None:
                return None
            out += got
        return out

    def mapping_value(self, node: ast.AST, key: str, depth: int = 0) -> list[str] | None:
        """The values of ``key`` in a dict literal, ``dict(...)`` or options object ``node`` (or a name bound to
        one); [] when it is known not to be there, None when unknown."""
        if depth > 6:
            return None
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is None:
                    inner = self.mapping_value(v, key, depth + 1)
                    if inner:
                        return inner
                elif self._literal(k) == key:
                    return self.strings(v, depth + 1)
            return []
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == key:
                    return self.strings(kw.value, depth + 1)
                if kw.arg is None:
                    return self.mapping_value(kw.value, key, depth + 1)
            return []
        if isinstance(node, ast.Name):
            values = self.assigned.get(node.id, [])
            if not values:
                return None
            out: list[str] = []
            for value in values:
                got = self.mapping_value(value, key, depth + 1)
                if got is None:
                    return None
                out += got
            return out
        return None


def _endpoint_of(module: _PythonModule, call: ast.Call, client: Client, name: str,
                 bound_to: str | None) -> tuple[list[str] | None, str]:
    """(the endpoint values, where they come from) for one client construction; ``[]`` = the SDK's default."""
    for spec in client.endpoint:
        key, _, sub = spec.partition(".")
        for kw in call.keywords:
            if kw.arg == key and isinstance(kw.value, ast.Constant) and kw.value.value is None:
                return [], "default"
            if kw.arg == key:
                if sub:
                    return module.mapping_value(kw.value, sub), f"{key}[{sub!r}]"
                return module.strings(kw.value), key
            if kw.arg is None:
                inner = module.mapping_value(kw.value, key)
                if inner is None:
                    return None, f"**{ast.unparse(kw.value)[:40]}"
                if inner:
                    return inner, f"**{ast.unparse(kw.value)[:40]}[{key!r}]"
        if key == "model" and call.args and name.endswith("InferenceClient"):
            return module.strings(call.args[0]), "model"
    if bound_to:  # client.base_url = "..." after construction
        for spec in client.endpoint:
            values = module.attr_assigned.get(f"{bound_to}.{spec.split('.')[0]}")
            if values:
                return module._union(values, 0), f"{bound_to}.{spec}"
    if name.startswith("litellm."):
        model = next((kw.value for kw in call.keywords if kw.arg == "model"), call.args[0] if call.args else None)
        models = module.strings(model)
        if models and all(m.startswith(_LOCAL_LITELLM) for m in models):
            return ["http://localhost"], f"model {models[0]!r}"
        return [], f"model {models[0]!r}" if models else "model"
    for var in client.env:
        if var in module.env:
            return list(module.env[var]), f"${var}"
    return [], "default"


def _classify(values: list[str], policy: Policy) -> tuple[str, str]:
    """("hosted" | "local" | "unresolved", the host) for the endpoint values of one client."""
    hosts = []
    for value in values:
        host = _host(value) if "://" in value else _host(value.split("/")[0])
        if not host or "{" in host:
            return "unresolved", value
        hosts.append(host)
    for host in hosts:
        if not policy.exempt_host(host):
            return "hosted", host
    return "local", hosts[0] if hosts else ""


MAX_CODE_NESTING = 3


def _decoded_strings(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, decoded text, how) for every string literal of ``tree`` that decodes (base64, hex, compressed...)
    to text: code or a URL hidden from a reader."""
    from .decoding import MIN_RUN, Decoder

    decoder = Decoder(max_total_bytes=16 << 20)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and len(node.value) >= MIN_RUN:
            value = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            for text, how in decoder.variants(value[:1 << 20]):
                if how != "unescape":
                    yield getattr(node, "lineno", 1), text, how


def python_findings(source: str, label: str, policy: Policy, env: dict[str, list[str]], out: Findings,
                    line_offset: int = 0, depth: int = 0) -> bool:
    """Analyse Python ``source`` (and code it runs from strings, or hides encoded in literals, to
    ``MAX_CODE_NESTING`` levels); False when it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    if depth < MAX_CODE_NESTING:
        for line, text, how in _decoded_strings(tree):
            where = f"{label}:{line + line_offset} (decoded: {how})"
            host = policy.hosted_in(text)
            if host:
                out.add(where, "hosted API host in code", text, host=host)
            python_findings(text, where, policy, env, out, depth=depth + 1)
    try:
        module = _PythonModule(tree, env)
        bound: dict[int, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if targets and isinstance(targets[0], ast.Name):
                    bound[id(node.value)] = targets[0].id
        lines = source.splitlines()
        for node in ast.walk(tree):
            texts: list[str] = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in module.docstrings:
                texts = [node.value]
            elif isinstance(node, (ast.BinOp, ast.JoinedStr)):  # a host assembled from pieces
                texts = module.strings(node) or []
            for value in texts:
                host = policy.hosted_in(value)
                if host:
                    line = getattr(node, "lineno", 1)
                    out.add(f"{label}:{line + line_offset}", "hosted API host in code",
                            lines[line - 1] if line <= len(lines) else value, host=host)
                    break
            if not isinstance(node, ast.Call):
                continue
            dotted = _dotted(node.func)
            name = module.qualify(dotted) if dotted else module.object_name(node.func)
            if not name:
                continue
            dotted = dotted or name
            if name in _RUNS_CODE and node.args and depth < MAX_CODE_NESTING:
                for code in module.strings(node.args[0]) or []:
                    python_findings(code, f"{label}:{node.lineno + line_offset} (run as code)", policy, env, out,
                                    depth=depth + 1)
            client = CLIENTS.get(name)
            if client is None and _OPENAI_MODULE_CALL.match(name):
                client, name = Client(("base_url",), ("OPENAI_BASE_URL", "OPENAI_API_BASE"), "api.openai.com"), \
                    "openai (module client)"
                values = module._union(module.attr_assigned.get("openai.base_url", []) +
                                       module.attr_assigned.get("openai.api_base", []), 0)
                source_of = "openai.base_url"
                if values is None and not (module.attr_assigned.get("openai.base_url") or
                                           module.attr_assigned.get("openai.api_base")):
                    values, source_of = next(((list(module.env[v]), f"${v}") for v in client.env if v in module.env),
                                             ([], "default"))
            elif client is None:
                continue
            else:
                values, source_of = _endpoint_of(module, node, client, name, bound.get(id(node)))
            where = f"{label}:{node.lineno + line_offset}"
            text = ast.get_source_segment(source, node) or dotted
            if values is None:
                out.unresolved.append({"where": where, "client": name, "endpoint": source_of, "text": text[:200]})
                continue
            if not values:
                out.add(where, "hosted SDK client", text, client=name, endpoint=f"default ({client.default})")
                continue
            kind, host = _classify(values, policy)
            if kind == "hosted":
                out.add(where, "hosted SDK client", text, client=name, endpoint=host)
            elif kind == "unresolved":
                out.unresolved.append({"where": where, "client": name, "endpoint": f"{source_of} = {host}"[:120],
                                       "text": text[:200]})
            else:
                out.allowed_clients.append({"where": where, "client": name, "endpoint": host})
    except RecursionError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ other text


def _code_lines(text: str, comment: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(comment) or stripped.startswith(("*", "/*")):
            continue
        yield number, line


def _balanced(text: str, start: int, limit: int = 2000) -> str:
    depth = 0
    for i in range(start, min(len(text), start + limit)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:start + limit]


def text_findings(text: str, label: str, policy: Policy, out: Findings, *, comment: str = "#",
                  js: bool = False) -> None:
    """Line scan of shell, JS/TS or unparseable Python: hosted hosts on code lines, JS SDK clients."""
    for number, line in _code_lines(text, comment):
        host = policy.hosted_in(line)
        if host:
            out.add(f"{label}:{number}", "hosted API host in code", line, host=host)
    if not js:
        return
    for match in _JS_CLIENT.finditer(text):
        args = _balanced(text, match.end() - 1)
        where = f"{label}:{text.count(chr(10), 0, match.start()) + 1}"
        endpoint = re.search(r"\b(?:baseURL|baseUrl|base_url|endpoint)\s*:\s*([\"'`])([^\"'`]*)\1", args)
        if endpoint:
            kind, host = _classify([endpoint.group(2)], policy)
        elif re.search(r"\b(?:baseURL|baseUrl|base_url|endpoint)\b", args):
            kind, host = "unresolved", args[:80]
        else:
            kind, host = "hosted", "default"
        if kind == "hosted":
            out.add(where, "hosted SDK client", match.group()[:-1] + args[:120], client=match.group(1), endpoint=host)
        elif kind == "unresolved":
            out.unresolved.append({"where": where, "client": match.group(1), "endpoint": host, "text": args[:200]})


def env_settings(text: str) -> dict[str, list[str]]:
    """``NAME=value`` settings of endpoint variables (``*_BASE_URL``, ``*_API_BASE``...) in shell, .env files or
    a transcript."""
    out: dict[str, list[str]] = {}
    for match in _ENV_SETTING.finditer(text):
        out.setdefault(match.group(1), []).append(match.group(3))
    return out


# ------------------------------------------------------------------------------------------------ files


def _kind_of_file(name: str, head: bytes) -> str | None:
    """python, notebook, shell, js, env, or None (not code), by extension, then by content."""
    lower = name.lower()
    ext = lower.rsplit(".", 1)[1] if "." in lower.lstrip(".") else ""
    if lower == ".env" or lower.startswith(".env.") or ext in ENV_EXTENSIONS:
        return "env"
    if ext in PYTHON_EXTENSIONS:
        return "python"
    if ext == "ipynb":
        return "notebook"
    if ext in SHELL_EXTENSIONS:
        return "shell"
    if ext in JS_EXTENSIONS:
        return "js"
    if head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0]
        if b"python" in first:
            return "python"
        if b"node" in first or b"deno" in first or b"bun" in first:
            return "js"
        return "shell"
    if ext in DATA_EXTENSIONS or b"\0" in head[:4096]:
        return None
    return "guess"  # no extension or an unknown one: Python if it parses as code, else a line scan


def _looks_like_code(tree: ast.Module) -> bool:
    return any(isinstance(n, (ast.Import, ast.ImportFrom, ast.Call, ast.FunctionDef, ast.Assign))
               for n in ast.walk(tree))


def _npm_installed(lock_relative: str, text: str) -> set[str]:
    """Package folders an npm lock (``node_modules/.package-lock.json``) lists with an integrity hash."""
    try:
        packages = json.loads(text).get("packages", {})
    except (ValueError, AttributeError):
        return set()
    base = lock_relative.rsplit("/node_modules/", 1)[0] if "/node_modules/" in lock_relative else ""
    out = set()
    for path, meta in packages.items() if isinstance(packages, dict) else []:
        if isinstance(meta, dict) and meta.get("integrity") and str(path).startswith("node_modules/"):
            out.add(f"{base}/{path}" if base else str(path))
    return out


def code_files(workspace: Path, skip: set[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(relative path, kind, text) of every code-like regular file of the workspace (``skip``: relative paths
    left out), and notes."""
    from .contamination import installed_files, is_cli_transcript

    cov = files.active()  # what the walk could not reach makes the check unverifiable (verdict)
    walk = Walk(max_depth=cov.bounds.max_depth, max_entries=cov.bounds.max_entries, skip=frozenset())
    notes: list[str] = []
    candidates = []
    if not workspace.is_dir():
        return [], notes
    npm: set[str] = set()
    wheels = held = 0
    for entry in walk.iter(workspace):
        parts = entry.relative.split("/")
        if not stat.S_ISREG(entry.st.st_mode) or any(p in _NEVER_SCANNED for p in parts[:-1]):
            continue
        if entry.relative in skip or entry.relative == "TASK.md" or is_cli_transcript(entry.relative):
            continue
        try:
            fd = open_regular(entry)
        except (OSError, ValueError) as exc:
            notes.append(f"{entry.relative} unreadable ({exc})")
            cov.unread(f"workspace/{entry.relative}", f"unreadable ({exc})")
            continue
        try:
            if entry.st.st_size > MAX_CODE_FILE_BYTES:
                head = os.pread(fd, 4096, 0)
                data = b""
            else:
                data = b"".join(read_chunks(fd, MAX_CODE_FILE_BYTES))
                head = data[:4096]
        finally:
            os.close(fd)
        content = files.sniff(head, entry.st.st_size)
        if content in NOT_CODE_CONTENT:
            continue
        if content != "text":  # an archive (Python runs zip files; code may be unpacked at run time)
            if content == "zip" and _is_wheel(workspace, entry.relative):
                wheels += 1  # a built library, like the installed ones verified against their records
            elif entry.st.st_size <= MAX_ARCHIVE_BYTES:
                candidates.append((entry.relative, "stream", ""))
            else:
                notes.append(f"{entry.relative}: {content} archive larger than {MAX_ARCHIVE_BYTES >> 20} MiB, not opened")
            continue
        if entry.st.st_size > MAX_CODE_FILE_BYTES:
            # Too large to parse whole: every line is scanned (padding hides nothing). Data files and binaries
            # (NUL bytes up front: a library, an image) are no source code, as for small files.
            if _kind_of_file(entry.name, head) is not None:
                candidates.append((entry.relative, "stream", ""))
            continue
        if entry.name == ".package-lock.json" and parts[-2:-1] == ["node_modules"]:
            npm |= _npm_installed(entry.relative, data.decode("utf-8", errors="replace"))
            continue
        kind = _kind_of_file(entry.name, data[:4096])
        if kind is not None:
            candidates.append((entry.relative, kind, data.decode("utf-8", errors="replace")))
            held += len(data)
        if len(candidates) >= MAX_FILES or held > MAX_HELD_BYTES:
            # Flooding the workspace with code-like files must not hide the one that calls a hosted API.
            why = (f"more than {MAX_FILES} code-like files or {MAX_HELD_BYTES >> 20} MiB of them: the rest not "
                   f"scanned")
            notes.append(why)
            cov.unread(f"workspace/{entry.relative}", why)
            break
    if wheels:
        notes.append(f"{wheels} wheel archive(s) (a *.dist-info/RECORD inside) not opened: built libraries")
    notes += [f"{where}: {why}" for where, why in walk.problems]
    for where, why in walk.problems:
        cov.unread(f"workspace/{where}", why)
    if npm:
        before = len(candidates)
        candidates = [c for c in candidates
                      if not any("/".join(c[0].split("/")[:i + 1]) in npm for i in range(c[0].count("/")))]
        notes.append(f"{before - len(candidates)} file(s) of {len(npm)} npm package(s) its lock lists, skipped")
    installed, _ = installed_files(workspace, [workspace / rel for rel, _, _ in candidates], notes)
    installed_rel = {p.relative_to(workspace).as_posix() for p in installed}
    if installed_rel:
        notes.append(f"{len(installed_rel)} installed library file(s) verified against their RECORD, skipped")
    return [c for c in candidates if c[0] not in installed_rel], notes


def _is_wheel(workspace: Path, relative: str) -> bool:
    """A zip archive whose members include a ``*.dist-info/RECORD``: a built Python package (pip's caches)."""
    import zipfile

    ref = files.regular_file(workspace, relative, "workspace")
    if ref is None:
        return False
    fd = ref.open_fd()
    try:
        with os.fdopen(os.dup(fd), "rb") as handle, zipfile.ZipFile(handle) as archive:
            names = archive.namelist()
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile):
        return False
    finally:
        os.close(fd)
    return any(n.count("/") == 1 and n.endswith(".dist-info/RECORD") for n in names[:100_000])


def _trace_lines(trace: Path | None) -> Iterator[tuple[int, str]]:
    """``(number, line)`` of the whole transcript, streamed; a line longer than the trace writer keeps is cut."""
    if trace is None or trace.is_symlink() or not trace.is_file():
        return
    with open(trace, "rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_TRACE_LINE_BYTES), b""), 1):
            yield number, raw.decode("utf-8", errors="replace").rstrip("\n")


def _line_batches(workspace: Path, relative: str) -> Iterator[str]:
    """The text lines of a large or archived file (archive members, sparse holes and NUL padding handled by
    :mod:`.files`), in batches of about ``MAX_CODE_FILE_BYTES``; what cannot be read is recorded there."""
    ref = files.regular_file(workspace, relative, "workspace")
    if ref is None:
        files.active().unread(f"workspace/{relative}", "no longer a regular file")
        return
    batch: list[str] = []
    size = 0
    for _, line in files.text_lines(ref):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "//")):
            continue  # filler: what is left of a padded script is parsed whole
        batch.append(line)
        size += len(line)
        if size >= MAX_CODE_FILE_BYTES:
            yield "\n".join(batch)
            batch, size = [], 0
    if batch:
        yield "\n".join(batch)


def _notebook_code(text: str) -> tuple[str, str]:
    """A notebook's code cells as (Python source, shell lines from ``!`` and ``%%bash`` cells)."""
    try:
        cells = json.loads(text).get("cells", [])
    except (ValueError, AttributeError):
        return "", text
    python, shell = [], []
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        if source.lstrip().startswith(("%%bash", "%%sh", "%%script")):
            shell.append(source)
            continue
        lines = []
        for line in source.splitlines():
            if line.lstrip().startswith(("!", "%")):
                shell.append(line.lstrip()[1:])
                lines.append("")
            else:
                lines.append(line)
        python.append("\n".join(lines))
    return "\n\n".join(python), "\n".join(shell)


def check_forbidden(*, run: dict, workspace: Path, trace: Path | None, helper_files: Iterable[str],
                    settings: dict, own_hosts: Iterable[str] = ()) -> dict[str, Any]:
    """The ``no_forbidden_api`` check."""
    hosted = [h.lower() for h in settings.get("hosts") or []]
    exempt = [h.lower() for h in (settings.get("allowed_hosts") or [])] + [h.lower() for h in own_hosts if h]
    policy = Policy(hosted, exempt)
    extra = [(name, re.compile(rx)) for name, rx in (settings.get("patterns") or {}).items()]
    findings = Findings(limit=int(settings.get("max_findings", 50)))
    egress = run.get("egress")
    for entry in egress or []:
        host = _host(str(entry))
        if policy.hosted_host(host):
            findings.add("run.json egress", "hosted API host contacted", str(entry), host=host)

    from .contamination import pristine_helper_files

    files, notes = code_files(workspace, pristine_helper_files(workspace, run.get("harness_manifest"), helper_files))
    # Endpoint variables set anywhere (shell scripts, .env files, notebooks, the transcript's commands).
    env: dict[str, list[str]] = {}
    for rel, kind, text in files:
        if kind in ("shell", "env", "notebook", "guess"):
            for key, values in env_settings(text).items():
                env.setdefault(key, []).extend(values)
    # The whole transcript, streamed: its endpoint settings, and the lines that run an HTTP client.
    for number, line in _trace_lines(trace):
        if _ENV_HINT.search(line):
            for key, values in env_settings(line.replace('\\"', '"')).items():
                env.setdefault(key, []).extend(values)
        if "." in line and _HTTP_CLIENT.search(line):
            for piece in re.split(r"\\n|\n", line):
                host = policy.hosted_in(piece)
                if host and _HTTP_CLIENT.search(piece):
                    findings.add(f"{trace.name}:{number}", "hosted API host requested in transcript", piece, host=host)
                    break

    for rel, kind, text in files:
        label = f"workspace/{rel}"
        if kind == "stream":
            for batch in _line_batches(workspace, rel):
                try:
                    parsed = _looks_like_code(ast.parse(batch))
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    parsed = False
                if parsed:
                    python_findings(batch, label, policy, env, findings)
                text_findings(batch, label, policy, findings, js=not parsed)
            continue
        if kind == "python" or kind == "guess":
            parsed = False
            try:
                tree = ast.parse(text)
                parsed = kind == "python" or _looks_like_code(tree)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                parsed = False
            if parsed:
                python_findings(text, label, policy, env, findings)
            elif kind == "python" or "import " in text or "curl " in text:
                text_findings(text, label, policy, findings)
            else:
                continue
        elif kind == "notebook":
            python, shell = _notebook_code(text)
            if not python_findings(python, label, policy, env, findings):
                text_findings(python, label, policy, findings)
            text_findings(shell, label, policy, findings)
        elif kind == "shell":
            text_findings(text, label, policy, findings)
        elif kind == "js":
            text_findings(text, label, policy, findings, comment="//", js=True)
        else:
            continue
        for number, line in _code_lines(text, "//" if kind == "js" else "#"):
            for name, regex in extra:
                if regex.search(line):
                    findings.add(f"{label}:{number}", name, line)

    network = run.get("network")
    egress_note = (f"{len(egress)} host(s) in the egress log" if egress is not None
                   else f"no egress log (network {network or 'unknown'})")
    summary = f"{len(files)} code file(s), the transcript and {egress_note} scanned"
    if findings.allowed_clients:
        first = findings.allowed_clients[0]
        summary += (f"; {len(findings.allowed_clients)} client(s) of a local or own endpoint allowed (e.g. "
                    f"{first['client']} at {first['where']} -> {first['endpoint']})")
    if findings.unresolved:
        first = findings.unresolved[0]
        summary += (f"; {len(findings.unresolved)} client(s) whose endpoint is not known statically, not flagged "
                    f"alone (e.g. {first['client']} at {first['where']}: {first['endpoint']})")
    items = findings.items
    if items:
        first = items[0]
        detail = f" {first['client']} -> {first['endpoint']}" if "client" in first else \
            (f" {first['host']}" if "host" in first else "")
        evidence = (f"{len(items)} finding(s), e.g. {first['pattern']}{detail} at {first['where']}: "
                    f"\"{first['text']}\"; {summary}")
    else:
        evidence = f"no forbidden API use found; {summary}"
    return {"passed": not items, "evidence": evidence, "findings": items, "unresolved": findings.unresolved[:50],
            "local_clients": findings.allowed_clients[:50], "egress": egress, "notes": notes[:50]}
