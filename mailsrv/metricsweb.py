"""
The metrics over HTTP ([metrics] endpoint): prometheus_client's twisted.web
resource at /metrics (mailsrv/metrics.py), /healthz (the process answers)
and /readyz (it can take mail), on loopback unless the endpoint says
otherwise.
"""

import os

from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger()


class Health(resource.Resource):
    """/healthz: the process answers (liveness)."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"


class Readiness(resource.Resource):
    """
    /readyz: 200 when the server can take mail (every listener bound, the
    spool writable, data_dir's disk above the floor), else 503 with why.
    """

    isLeaf = True

    def __init__(self, listeners, spool_root, data_dir, min_free):
        super().__init__()
        self.listeners = listeners
        self.spool_root = spool_root
        self.data_dir = data_dir
        self.min_free = min_free

    def problems(self):
        found = [f"{service.listener.name}: not listening" for service in self.listeners
                 if service.port is None]
        if not os.access(self.spool_root, os.W_OK | os.X_OK):
            found.append(f"spool {self.spool_root}: not writable")
        try:
            stats = os.statvfs(self.data_dir)
            free = stats.f_bavail * stats.f_frsize
            if free < self.min_free:
                found.append(f"data_dir {self.data_dir}: {free} bytes free, below "
                             f"{self.min_free}")
        except OSError as e:
            found.append(f"data_dir {self.data_dir}: {e.strerror}")
        return found

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        problems = self.problems()
        if problems:
            request.setResponseCode(503)
            return ("\n".join(problems) + "\n").encode("utf-8")
        return b"ready\n"


def site(readiness):
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource())
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", readiness)
    return server.Site(root)


class MetricsService(service.Service):
    """Serves L{site} on [metrics] endpoint while the server runs."""

    def __init__(self, endpoint, readiness, reactor):
        self.endpoint = endpoint
        self.readiness = readiness
        self.reactor = reactor
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        d = endpoints.serverFromString(self.reactor, self.endpoint).listen(
            site(self.readiness))
        d.addCallbacks(self._listening, self._not_listening)

    def _listening(self, port):
        self.port = port
        log.info("metrics: {endpoint} (/metrics, /healthz, /readyz)", endpoint=self.endpoint)

    def _not_listening(self, failure):
        log.error("metrics: cannot listen on {endpoint}: {error}", endpoint=self.endpoint,
                  error=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
