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
"""

import json
import re
import sys
import time

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
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


def give_to(application, settings):
    """Make twistd log through L{observer} (called with twistd's application)."""
    chosen = observer(settings)
    if chosen is not None:
        application.setComponent(ILogObserver, chosen)


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
