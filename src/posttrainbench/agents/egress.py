"""The host side of the ``proxy`` network policy: a small logging egress gateway.

The sandbox has its own, empty network namespace. The gateway listens on Unix sockets in a
directory that the sandbox binds in; :mod:`netrelay` inside the sandbox exposes them as loopback
TCP ports. Two kinds of socket:

* ``proxy.sock``: an HTTP proxy (``CONNECT host:port`` for TLS, absolute-URI requests for plain
  HTTP). The agent reaches it through ``HTTP_PROXY``/``HTTPS_PROXY``.
* ``forward-<port>.sock``: a plain TCP forward to one fixed host endpoint (an OpenAI-compatible
  model server on the host's loopback), exposed inside at the same address, so a client needs
  no proxy support to reach it.

Every connection is written to the trace (``egress`` events) and its host is kept for the run
record. With an allow-list (``sandbox.allowed_hosts``, shell patterns), other hosts are refused
(HTTP 403) and recorded as denied. The host's own and private addresses are refused through the
proxy unless listed: a service on the host is reached only through an explicit forward.

Where the site reaches the internet only through its own HTTP proxy (``HTTPS_PROXY``/``HTTP_PROXY``,
``ALL_PROXY`` and ``NO_PROXY`` in the job's environment), an allowed connection goes through that
proxy: a CONNECT tunnel for ``CONNECT`` (and absolute-URI requests relayed to it for plain HTTP),
unless ``NO_PROXY`` exempts the host. A host that does not resolve locally is then left for the site's
proxy to resolve. A refused host never reaches the site's proxy; a site proxy that cannot be reached
or refuses is answered with HTTP 502 and a one-line reason.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from .sandbox import TraceWriter

PROXY_SOCKET = "proxy.sock"
_MAX_HEADER = 64 * 1024
# Host names are the agent's choice: how much of one is kept, and how many distinct hosts the gateway lets
# the agent reach (each logged by name); a further new host is refused and counted under OTHER_HOSTS.
MAX_HOST_CHARS = 300
MAX_HOSTS_TRACKED = 1000
OTHER_HOSTS = "(other hosts)"


def _is_local(host: str) -> bool:
    """Loopback, link-local, private or unspecified addresses, and the host's own names."""
    if host.lower() in ("localhost", "localhost.localdomain", socket.gethostname().lower()):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` stands for (itself when it is one); empty when it does not resolve."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


async def _open_any(addresses: list[str], port: int):
    """A connection to the first of ``addresses`` that answers: the very addresses the policy checked, so a
    name that resolves differently the second time (DNS rebinding) cannot lead to the host's own services."""
    error: OSError = OSError("the name did not resolve")
    for address in addresses:
        try:
            return await asyncio.open_connection(address, port)
        except OSError as exc:
            error = exc
    raise error


# How long the site's proxy gets to accept a connection and to answer a CONNECT.
UPSTREAM_TIMEOUT = 30.0


@dataclass(frozen=True)
class UpstreamProxy:
    """The site's HTTP proxy, as one of its variables names it."""

    host: str
    port: int
    variable: str
    authorization: str | None = None  # the Proxy-Authorization value, from user:password in the URL

    def __str__(self) -> str:  # never the credentials
        return f"{self.host}:{self.port} ({self.variable})"


def _parse_proxy(variable: str, value: str) -> UpstreamProxy:
    """ValueError naming the variable unless ``value`` is an http:// proxy URL (a bare host:port is one)."""
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme.lower() != "http":
        raise ValueError(f"{variable} names a {parts.scheme}:// proxy; the egress gateway chains only to "
                         "http:// proxies (network policy 'proxy')")
    try:
        host, port = parts.hostname, parts.port or 80
    except ValueError:  # a port that is not a number
        host = None
    if not host:
        raise ValueError(f"{variable} is not a proxy URL (http://host:port)")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return UpstreamProxy(host, port, variable, authorization)


def _no_proxy_match(host: str, port: int, entries: list[str]) -> bool:
    """Whether NO_PROXY's ``entries`` exempt ``host``: ``*``; a name and its subdomains (a leading dot
    or ``*.`` is the same); an address or a CIDR block; any of them with ``:port`` for that port only."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        if entry == "*":
            return True
        name, entry_port = entry, None
        if not entry.startswith("[") and entry.count(":") == 1:
            name, _, number = entry.partition(":")
            entry_port = int(number) if number.isdigit() else None
        elif entry.startswith("[") and "]:" in entry:
            name, _, number = entry[1:].partition("]:")
            entry_port = int(number) if number.isdigit() else None
        if entry_port is not None and entry_port != port:
            continue
        name = name.strip("[]").lower().removeprefix("*").lstrip(".").rstrip(".")
        if not name:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


class SiteProxies:
    """The site's proxy settings from an environment (lower-case names first, as curl and Python read them)."""

    def __init__(self, environ: Mapping[str, str]):
        def first(*names: str) -> UpstreamProxy | None:
            for name in names:
                if environ.get(name, "").strip():
                    return _parse_proxy(name, environ[name].strip())
            return None

        self.https = first("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
        self.http = first("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
        raw = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        self.no_proxy = [e.strip() for e in raw.split(",") if e.strip()]

    def for_target(self, tunnel: bool, host: str, port: int) -> UpstreamProxy | None:
        """The proxy a connection to ``host:port`` goes through (None: directly); ``tunnel`` for CONNECT."""
        proxy = self.https if tunnel else self.http
        if proxy is None or _no_proxy_match(host, port, self.no_proxy):
            return None
        return proxy


class UpstreamError(OSError):
    """The site's proxy could not be reached, or refused the connection; the message is the agent's 502 line."""


async def _through_upstream(proxy: UpstreamProxy, host: str, port: int):
    """A tunnel to ``host:port`` through the site's proxy: a connection past its ``200`` to CONNECT."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), UPSTREAM_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        raise UpstreamError(f"the site's proxy {proxy} could not be reached: {str(exc) or 'timed out'}") from None
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization:
        request += f"Proxy-Authorization: {proxy.authorization}\r\n"
    writer.write((request + "\r\n").encode("latin-1"))
    try:
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UPSTREAM_TIMEOUT)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.close()
        raise UpstreamError(f"the site's proxy {proxy} did not answer CONNECT {authority}: "
                            f"{type(exc).__name__}") from None
    status = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    fields = status.split(" ", 2)
    if len(fields) < 2 or not fields[1].startswith("2"):
        writer.close()
        raise UpstreamError(f"the site's proxy {proxy} refused CONNECT {authority}: {status[:200]}")
    return reader, writer


async def _open_upstream(proxy: UpstreamProxy):
    """A connection to the site's proxy itself, for a plain-HTTP request in absolute form."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), UPSTREAM_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        raise UpstreamError(f"the site's proxy {proxy} could not be reached: {str(exc) or 'timed out'}") from None


def _without_proxy_authorization(headers: bytes) -> bytes:
    """The agent's header lines less any Proxy-Authorization (the gateway's own goes to the site's proxy)."""
    lines = headers.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"proxy-authorization:"))


def forward_socket_name(port: int) -> str:
    return f"forward-{port}.sock"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _splice(a: tuple, b: tuple) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return authority, default_port


class EgressGateway:
    """Unix-socket HTTP proxy and TCP forwards for one sandboxed run, served from a thread."""

    def __init__(self, socket_dir: Path, trace: TraceWriter, *, forwards: Iterable[tuple[str, int]] = (),
                 allowed_hosts: Iterable[str] | None = None, environ: Mapping[str, str] | None = None):
        self.socket_dir = Path(socket_dir)
        # Read at start(): a proxy variable the gateway cannot use stops it from starting (the pipeline's fault).
        self._environ = dict(os.environ if environ is None else environ)
        self.site: SiteProxies | None = None
        self.trace = trace
        self.forwards = list(forwards)
        self.allowed_hosts = list(allowed_hosts) if allowed_hosts is not None else None
        self.hosts: dict[str, dict] = {}  # "host:port" -> {"connections": n, "denied": n}
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []

    # ---- bookkeeping ----------------------------------------------------------------------------
    async def _allowed(self, host: str, port: int) -> tuple[bool, list[str]]:
        """Whether ``host`` may be reached, and the addresses it was resolved to (connect to those only)."""
        listed = self.allowed_hosts is not None and any(fnmatch.fnmatch(host, p) for p in self.allowed_hosts)
        addresses = await _resolve(host, port)
        if _is_local(host) or any(_is_local(a) for a in addresses):
            return listed, addresses  # the host's own services are reachable only when named (or forwarded)
        return self.allowed_hosts is None or listed, addresses

    def _full(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is new and the log already holds as many hosts as it keeps: such a host is
        refused, so every host the agent did reach is in the log by name (the judge reads it)."""
        return f"{host[:MAX_HOST_CHARS]}:{port}" not in self.hosts and len(self.hosts) >= MAX_HOSTS_TRACKED

    def _record(self, host: str, port: int, via: str, allowed: bool, detail: str = "") -> None:
        host = host[:MAX_HOST_CHARS]
        key = f"{host}:{port}"
        if key not in self.hosts and len(self.hosts) >= MAX_HOSTS_TRACKED:
            key = OTHER_HOSTS  # refused (see _full): counted together
            self.hosts.setdefault(key, {"host": OTHER_HOSTS, "port": 0, "connections": 0, "denied": 0})
        entry = self.hosts.setdefault(key, {"host": host, "port": port, "connections": 0, "denied": 0})
        entry["connections" if allowed else "denied"] += 1
        self.trace.agent_event("egress", host=host, port=port, via=via, allowed=allowed, detail=detail)

    def summary(self) -> list[dict]:
        return list(self.hosts.values())

    # ---- servers --------------------------------------------------------------------------------
    async def _forward(self, reader, writer, host: str, port: int) -> None:
        self._record(host, port, "forward", True)
        try:
            upstream = await asyncio.open_connection(host, port)
        except OSError as exc:
            self.trace.agent_event("egress_error", host=host[:MAX_HOST_CHARS], port=port, error=str(exc)[:300])
            writer.close()
            return
        await _splice((reader, writer), upstream)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        request_line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = request_line.decode("latin-1").split(" ", 2)
        except ValueError:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        if method.upper() == "CONNECT":
            host, port = _split_host_port(target, 443)
            path = None
        else:
            scheme, sep, remainder = target.partition("://")
            if not sep or scheme.lower() != "http":
                writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                writer.close()
                return
            authority, slash, path = remainder.partition("/")
            host, port = _split_host_port(authority, 80)
            path = slash + path or "/"
        full = self._full(host, port)
        allowed, addresses = (False, []) if full else await self._allowed(host, port)
        # The site's proxy cannot reach this host's loopback: a listed loopback host is reached directly.
        loopback = host.lower() in ("localhost", "localhost.localdomain") or \
            any(_is_loopback(a) for a in addresses)
        site = self.site.for_target(path is None, host, port) if self.site is not None and not loopback else None
        self._record(host, port, "proxy", allowed, detail=f"{method} {target}"[:300] + (f" via {site}" if site else ""))
        if not allowed:
            why = (f"more than {MAX_HOSTS_TRACKED} distinct hosts contacted" if full
                   else "host not allowed by the network policy")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n" + why.encode() + b"\n")
            await writer.drain()
            writer.close()
            return
        try:
            if site is None:
                upstream = await _open_any(addresses, port)
            elif path is None:
                upstream = await _through_upstream(site, host, port)
            else:
                upstream = await _open_upstream(site)
        except OSError as exc:
            reason = str(exc) if isinstance(exc, UpstreamError) else f"{host}:{port} could not be reached: {exc}"
            reason = " ".join(reason.split())[:300]
            self.trace.agent_event("egress_error", host=host[:MAX_HOST_CHARS], port=port, error=reason)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                         + b"egress gateway: " + reason.encode("utf-8", "replace") + b"\n")
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                pass
            writer.close()
            return
        if path is None:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        elif site is None:
            # Plain HTTP: send the request on in origin form. One request per connection.
            upstream[1].write(f"{method} {path} {version}\r\n".encode("latin-1") + rest)
        else:
            # To the site's proxy in absolute form, with its credentials rather than any the agent sent.
            extra = f"Proxy-Authorization: {site.authorization}\r\n".encode("latin-1") if site.authorization else b""
            upstream[1].write(f"{method} {target} {version}\r\n".encode("latin-1") + extra
                              + _without_proxy_authorization(rest))
        await _splice((reader, writer), upstream)

    async def _start(self) -> None:
        self.site = SiteProxies(self._environ)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        proxy_path = self.socket_dir / PROXY_SOCKET
        proxy_path.unlink(missing_ok=True)
        self._servers.append(await asyncio.start_unix_server(self._proxy, path=str(proxy_path), limit=_MAX_HEADER))
        for host, port in self.forwards:
            path = self.socket_dir / forward_socket_name(port)
            path.unlink(missing_ok=True)

            async def handler(r, w, host=host, port=port):
                await self._forward(r, w, host, port)

            self._servers.append(await asyncio.start_unix_server(handler, path=str(path)))
        for path in self.socket_dir.iterdir():
            path.chmod(0o666)  # any user id the sandbox maps to may connect

    def start(self) -> "EgressGateway":
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="egress-gateway", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
