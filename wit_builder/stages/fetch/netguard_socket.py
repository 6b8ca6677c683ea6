"""Deadline-aware connections for netguard: sockets (plain and TLS) whose every read and
write ends by the attempt's wall-clock deadline, the guarded connect (only to addresses
`netguard_address.address_problem` passed) and the http.client connections built on it."""
from __future__ import annotations

import http.client
import socket
import ssl
import time

from wit_builder.errors import Failure
from wit_builder.stages.fetch.netguard_address import address_problem


class DeadlinePassed(TimeoutError):
    """An attempt ran past its wall-clock deadline (raised from a socket read or write)."""


class Deadline:
    """Socket mixin: before every read and write, the timeout becomes the smaller of the
    per-wait timeout (`step`) and what is left until `deadline` (None: no deadline).

    http.client reads headers and body through `recv_into` one buffer at a time, so a
    server that keeps sending a little (a byte every 0.1 s, endless `100 Continue`
    lines) meets the deadline inside the read that crosses it, not after it."""
    deadline: float | None = None
    step: float | None = None

    def _arm(self) -> bool:
        """Set the timeout for the next wait; True if the deadline (not `step`) bounds it."""
        if self.deadline is None:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("deadline passed")
        super().settimeout(left if self.step is None else min(self.step, left))
        return self.step is None or left <= self.step

    def _wait(self, op, *a, **k):
        by_deadline = self._arm()
        try:
            return op(*a, **k)
        except TimeoutError:
            if by_deadline:
                raise DeadlinePassed("deadline passed") from None
            raise

    def recv(self, *a, **k):
        return self._wait(super().recv, *a, **k)

    def recv_into(self, *a, **k):
        return self._wait(super().recv_into, *a, **k)

    def send(self, *a, **k):
        return self._wait(super().send, *a, **k)

    def sendall(self, *a, **k):
        return self._wait(super().sendall, *a, **k)


class DeadlineSocket(Deadline, socket.socket):
    pass


class DeadlineSSLSocket(Deadline, ssl.SSLSocket):
    def read(self, *a, **k):
        return self._wait(super().read, *a, **k)

    def do_handshake(self, *a, **k):
        return self._wait(super().do_handshake, *a, **k)


def getaddrinfo(host: str, port: int) -> list:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def guarded_connect(host: str, port: int, timeout: float, allow_private: bool,
                    deadline: float | None = None, resolve=getaddrinfo) -> socket.socket:
    """A TCP connection to `host`, made only to addresses that passed `address_problem`;
    every later read and write on it ends by `deadline` (time.monotonic()) if given.
    `resolve(host, port)` gives the addresses (getaddrinfo's form): the ones checked
    are the ones connected to."""
    try:
        infos = resolve(host, port)
    except socket.gaierror as e:
        raise Failure("dns_error", f"cannot resolve {host}: {e.strerror or e}") from None
    if not allow_private:
        for *_, sockaddr in infos:
            problem = address_problem(sockaddr[0])
            if problem:
                raise Failure("blocked_address", f"{host} is or resolves to {sockaddr[0]}, a "
                              f"{problem} address (--allow-private-network fetches it)")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = DeadlineSocket(family, kind, proto)
        sock.step, sock.deadline = timeout, deadline
        left = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        if left <= 0:
            sock.close()
            raise DeadlinePassed("deadline passed before connecting")
        sock.settimeout(left)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error or OSError(f"no address for {host}")


def set_deadline(sock, deadline: float | None) -> None:
    if isinstance(sock, Deadline):
        sock.deadline = deadline


class HTTP(http.client.HTTPConnection):
    def __init__(self, host, port, timeout, allow_private, resolve=getaddrinfo):
        super().__init__(host, port, timeout=timeout)
        self.allow_private = allow_private
        self.resolve = resolve
        self.deadline: float | None = None

    def connect(self):
        self.sock = guarded_connect(self.host, self.port, self.timeout, self.allow_private,
                                    self.deadline, self.resolve)


class HTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, timeout, allow_private, context, resolve=getaddrinfo):
        super().__init__(host, port, timeout=timeout, context=context)
        self.allow_private = allow_private
        self.resolve = resolve
        self.tls = context
        self.deadline: float | None = None

    def connect(self):
        sock = guarded_connect(self.host, self.port, self.timeout, self.allow_private,
                               self.deadline, self.resolve)
        sock.deadline = None   # the TLS socket below takes over the deadline
        tls = self.tls.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        tls.step, tls.deadline = self.timeout, self.deadline
        tls.do_handshake()
        self.sock = tls

