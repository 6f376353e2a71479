"""Inside a sandbox without a network of its own: listen on loopback TCP ports and relay each
connection to a Unix socket bound in from the host, then run the agent command.

    python netrelay.py --map 127.0.0.1:3128=/ptb/egress/proxy.sock [--map ...] -- COMMAND...

The listeners are bound before the command starts, so the agent never races them. The relay
ignores SIGTERM (the deadline's SIGTERM is for the agent; the SIGKILL that follows ends both) and
exits with the command's exit status. Standard library only: it runs with the agent's Python.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, unix_path: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(unix_path)
        except OSError:
            client.close()
            upstream.close()
            continue
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


def _listener(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(64)
    return sock


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("netrelay: usage: --map HOST:PORT=SOCKET ... -- COMMAND...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="netrelay")
    parser.add_argument("--map", action="append", default=[], metavar="HOST:PORT=SOCKET")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("netrelay: no command after --")
    for mapping in args.map:
        address, _, unix_path = mapping.partition("=")
        threading.Thread(target=_serve, args=(_listener(address), unix_path), daemon=True).start()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    code = child.wait()
    return 128 - code if code < 0 else code  # killed by a signal: the shell convention


if __name__ == "__main__":
    sys.exit(main())
