"""
The running server's control socket, for the `mailsrv` command: what only
the server process knows or can do (its login lockouts live in its
memory). A UNIX socket in data_dir (C{control.sock}, mode 0600 in a 0700
directory: only the server's user, and root, reach it); one command a
line, one JSON object a line in answer: C{{"ok": true, ...}} or
C{{"ok": false, "error": "..."}}.

  - C{locked}: C{{"locked": [[key, seconds left], ...]}}
  - C{unlock TARGET}: C{{"unlocked": [key, ...]}} (an IP, a user or a key)
  - C{reload}: C{{"changed": [...], "restart": [...]}} (mailsrv/reload.py)
  - C{metrics}: C{{"text": "..."}}, the Prometheus text of /metrics
  - C{ready}: C{{"problems": [...]}}, what /readyz would say (empty: ready)

The parent of [server] workers asks its workers C{metrics} and C{ready}
to serve [metrics] for all of them (mailsrv/metricsweb.py).
"""

import json
import os
import socket

from prometheus_client import generate_latest
from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.internet.protocol import Factory

log = Logger()

SOCKET_NAME = "control.sock"
UNIX_PATH_MAX = 107  # bytes of a UNIX socket's path on Linux (sun_path, less its NUL)
MAX_ANSWER = 16 << 20  # bytes of an answer a client reads at most


class ControlError(Exception):
    """A control socket gave no usable answer, or the server refused."""


class ServerAway(ControlError):
    """No server listens on the control socket."""


def ask(path, command, timeout=10):
    """
    The answer (a dict) of the server on control socket C{path} to
    C{command}. Blocking: for the `mailsrv` command, or in a thread.

    @raise ServerAway: nobody listens there.
    @raise ControlError: no answer, or the server refused (its error).
    """
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ServerAway(f"no running server answers on {path}: the path is longer than a "
                         f"UNIX socket's ({UNIX_PATH_MAX} bytes), so no server listens "
                         "there; give [server] data_dir a shorter path")
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(command.encode("utf-8") + b"\n")
            while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ServerAway(f"no running server answers on {path}")
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}")
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: no answer from the server")
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "the server refused"))
    return answer


class ControlProtocol(LineOnlyReceiver):
    """One admin's connection: commands answered in order."""

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def lineReceived(self, line):
        words = line.decode("utf-8", "replace").split()
        command, args = (words[0].lower(), words[1:]) if words else ("", [])
        if command not in self.factory.commands:
            return self._answer({"ok": False, "error": f"unknown command {command!r}"})
        usage, handler = self.factory.commands[command]
        if len(args) != len(usage.split()) - 1:
            return self._answer({"ok": False, "error": f"usage: {usage}"})
        d = defer.maybeDeferred(handler, *args)
        d.addCallbacks(lambda answer: {"ok": True, **answer},
                       lambda failure: {"ok": False, "error": failure.getErrorMessage()})
        d.addCallback(self._answer)

    def _answer(self, answer):
        self.sendLine(json.dumps(answer).encode("utf-8"))

    def lineLengthExceeded(self, line):
        self._answer({"ok": False, "error": "line too long"})
        self.transport.loseConnection()


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, sessions, reload=None, readiness=None):
        """
        @param sessions: the L{mailsrv.sessions.ISessionStore}.
        @param reload: reloads the config (L{mailsrv.reload.Reloader.reload}).
        @param readiness: the L{mailsrv.metricsweb.Readiness} of /readyz.
        """
        self.commands = {  # name -> (usage, handler)
            "locked": ("locked", lambda: sessions.locked().addCallback(
                lambda keys: {"locked": [[key, round(left)] for key, left in keys]})),
            "unlock": ("unlock TARGET", lambda target: self._unlock(sessions, target)),
            "metrics": ("metrics", lambda: threads.deferToThread(generate_latest).addCallback(
                lambda text: {"text": text.decode("utf-8")})),  # (in a thread, as /metrics)
        }
        if reload is not None:
            self.commands["reload"] = ("reload", reload)
        if readiness is not None:
            self.commands["ready"] = ("ready", lambda: {"problems": readiness.problems()})

    @staticmethod
    def _unlock(sessions, target):
        d = sessions.unlock(target)

        def unlocked(keys):
            log.info("login lockout ended by an admin: {keys}", keys=", ".join(keys) or "-")
            return {"unlocked": keys}
        return d.addCallback(unlocked)


class ControlService(service.Service):
    """Listens on data_dir/control.sock while the server runs."""

    def __init__(self, path, factory, reactor):
        self.path = path
        self.factory = factory
        self.reactor = reactor
        self._port = None

    def startService(self):
        super().startService()
        if len(os.fsencode(self.path)) > UNIX_PATH_MAX:
            log.warn("control socket {path}: longer than a UNIX socket's path may be; "
                     "`mailsrv reload` and `mailsrv auth` cannot reach this server (SIGHUP "
                     "still reloads)", path=self.path)
            return
        try:  # a socket left by a server that died: ours now (data_dir is locked)
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        endpoint = endpoints.UNIXServerEndpoint(self.reactor, str(self.path), mode=0o600)
        d = endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._not_listening)

    def _listening(self, port):
        self._port = port

    def _not_listening(self, failure):
        log.error("control socket {path}: {error}; `mailsrv auth` cannot reach the server",
                  path=self.path, error=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()
        return None
