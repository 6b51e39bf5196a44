"""
Where the log goes and in which shape ([log], docs/config.md, "Logs").

twistd writes text lines to stdout (under C{-n}) or to twistd.log. With
C{[log] format = "json"} or a C{[log] file}, the server gives twistd its
own observer instead (an C{ILogObserver} component of the application,
which twistd uses when no C{--logger} is given): JSON objects or the same
text lines, one a line, to stdout or to C{file} rotated at C{max_size}
keeping C{max_files}.

A JSON object has C{time} (ISO 8601, UTC), C{level}, C{system} (the
module), C{text} (the line the text log would show) and every field of the
event that is a plain value: C{queue_id}, C{ip}, C{user}, C{sender}, ...
so that `jq 'select(.queue_id == "...")'` follows one message.
`mailsrv log trace QUEUEID` does the same on text or JSON logs
(L{trace}).

Under C{[server] workers}, the parent alone writes the log: each worker
writes its events as JSON to its standard output, a pipe to the parent
(L{to_parent}), which publishes them again in its own log with the
worker's node name (L{WorkerLog}). So a C{[log] file} has one writer,
which alone rotates it, and a daemonized parent loses no worker's line.
"""

import json
import re
import sys
import time

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.logfile import LogFile

_PLAIN = (str, int, float, bool, type(None))


def json_line(event):
    """One event as a JSON object on one line (with its newline)."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", 0)))
        + f".{int(event.get('log_time', 0) % 1 * 1000):03d}Z",
        "level": getattr(event.get("log_level"), "name", "info"),
        "system": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def observer(settings):
    """
    The L{ILogObserver} that [log] asks for, or L{None} to leave twistd's
    own (text to where twistd writes).
    """
    if settings.format == "text" and settings.file is None:
        return None
    if settings.file is None:
        out = sys.stdout
    else:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        out = LogFile(settings.file.name, str(settings.file.parent),
                      rotateLength=settings.max_size, maxRotatedFiles=settings.max_files,
                      defaultMode=0o640)
    shape = json_line if settings.format == "json" else formatEventAsClassicLogText
    return FileLogObserver(out, shape)


def give_to(application, settings, worker=False):
    """
    Make twistd log through L{observer} (called with twistd's application),
    or in a worker, L{to_parent}.
    """
    chosen = to_parent() if worker else observer(settings)
    if chosen is not None:
        application.setComponent(ILogObserver, chosen)


def to_parent():
    """A worker's observer: each event as one JSON line on stdout, for L{WorkerLog}."""
    return FileLogObserver(sys.stdout, _event_as_json_line)


def _event_as_json_line(event):
    failure = event.get("log_failure")
    if failure is not None:  # (Twisted's JSON keeps a failure's frames, not its value)
        event = dict(event, mailsrv_traceback=failure.getTraceback())
    return eventAsJSON(event) + "\n"


class WorkerLog:
    """
    The parent's end of a worker's standard output and error: the events
    of L{to_parent}, published again in the parent's log under the worker's
    node name (C{[mx1-2 mailsrv.smtp.reception#info]}, and a C{node} field
    in JSON); any other line (a worker's start-up error) as a warning.
    """

    MAX_LINE = 1 << 20  # bytes; a longer line is cut, with a mark

    def __init__(self, node, publish=None):
        """@param publish: where events go; the global log publisher by default."""
        self.node = node
        self.publish = publish or Logger().observer
        self._log = Logger(namespace="mailsrv.workers", observer=self.publish)
        self._pending = {}  # fd -> bytes of an unfinished line

    def received(self, fd, data):
        """Bytes a worker wrote on C{fd} (1: its events, 2: its standard error)."""
        pending = self._pending.get(fd, b"") + data
        *lines, rest = pending.split(b"\n")
        if len(rest) > self.MAX_LINE:
            lines.append(rest[:self.MAX_LINE] + b" [cut]")
            rest = b""
        self._pending[fd] = rest
        for line in lines:
            self._line(fd, line.decode("utf-8", "replace"))

    def ended(self):
        """The worker is gone: what it wrote without a newline is a line too."""
        for fd, rest in self._pending.items():
            if rest:
                self._line(fd, rest.decode("utf-8", "replace"))
        self._pending.clear()

    def _line(self, fd, line):
        if not line.strip():
            return
        event = None
        if fd == 1 and line.startswith("{"):
            try:
                event = eventFromJSON(line)
            except (ValueError, TypeError, KeyError):
                pass
        if not isinstance(event, dict) or "log_namespace" not in event:
            self._log.warn("{node}: {line}", node=self.node, line=line)
            return
        level = getattr(event.get("log_level"), "name", "info")
        event["log_system"] = f"{self.node} {event['log_namespace']}#{level}"
        event["node"] = self.node
        traceback = event.pop("mailsrv_traceback", None)
        if traceback is not None:
            event["log_failure"] = _TracebackText(traceback)
        self.publish(event)


class _TracebackText:
    """A worker's failure, as the parent's observers show it: its traceback's text."""

    def __init__(self, text):
        self.text = text

    def getTraceback(self, *args, **kwargs):
        return self.text


def files_of(path):
    """A rotated log's files, oldest first: C{path.N} ... C{path.1}, C{path}."""
    rotated = sorted((p for p in path.parent.glob(path.name + ".*")
                      if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
    return rotated + ([path] if path.exists() else [])


# The queue's line for a bounce or delay notice it made (mailsrv/queue/runner.py).
_MADE = re.compile(r"\b(?:bounce|delay notice) (\S+) to <")


def trace(lines, queue_id):
    """
    The lines of one message: those that name C{queue_id} (a JSON line
    by any of its values), and those of the bounces and delay notices
    its lines say were made.
    """
    wanted = {queue_id}
    for line in lines:
        text = line
        if line.startswith("{"):
            try:
                text = " ".join(str(v) for v in json.loads(line).values())
            except ValueError:
                pass
        if any(q in text for q in wanted):
            wanted.update(_MADE.findall(text))
            yield line
