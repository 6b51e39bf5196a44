"""
The metrics over HTTP ([metrics] endpoint): prometheus_client's twisted.web
resource at /metrics (mailsrv/metrics.py), /healthz (the process answers)
and /readyz (it can take mail), on loopback unless the endpoint says
otherwise.

With [server] workers, the parent serves the endpoint for all of them: it
asks each worker's control socket (mailsrv/control.py) at each request,
and shows every worker's series with a label C{node} (C{mx1-2}), and
/readyz is ready when every worker is (L{WorkersMetrics},
L{WorkersReadiness}).
"""

import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.logger import Logger
from twisted.web import resource, server

from mailsrv.control import ControlError, ask

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


class _AskedWorkers(resource.Resource):
    """A page made of every worker's answer to C{command} on its control socket."""

    isLeaf = True
    command = ""
    # Seconds a worker has to answer one request.
    TIMEOUT = 5

    def __init__(self, sockets, reactor):
        """@param sockets: each worker's node name -> its control socket's path."""
        super().__init__()
        self.sockets = sockets
        self.reactor = reactor

    def answers(self):
        """A Deferred of {node: its answer, or the L{ControlError} it gave}."""
        pool = self.reactor.getThreadPool()
        asked = [threads.deferToThreadPool(self.reactor, pool, ask, str(path), self.command,
                                           self.TIMEOUT).addErrback(_control_error)
                 for path in self.sockets.values()]
        return defer.gatherResults(asked).addCallback(lambda got: dict(zip(self.sockets, got)))

    def render_GET(self, request):
        def answer(page):
            code, body = page
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"text/plain")
            request.write(body)
            request.finish()
        self.answers().addCallback(self.page).addCallback(answer)
        return server.NOT_DONE_YET

    def page(self, answers):
        """C{(HTTP status, body)} from the workers' answers."""
        raise NotImplementedError


def _control_error(failure):
    failure.trap(ControlError)
    return failure.value


class WorkersMetrics(_AskedWorkers):
    """/metrics of the parent of [server] workers."""

    command = "metrics"

    def page(self, answers):
        texts = {node: answer["text"] for node, answer in answers.items()
                 if not isinstance(answer, ControlError)}
        return 200, merged_metrics(texts, len(answers))


def merged_metrics(texts, workers):
    """
    One Prometheus text of the workers' texts ({node: text}), each sample
    labelled with its C{node}, and C{mailsrv_workers_answering}.
    """
    families = {}
    for node, text in texts.items():
        for family in text_string_to_metric_families(text):
            kept = families.get(family.name)
            if kept is None:
                kept = families[family.name] = Metric(family.name, family.documentation,
                                                      family.type, family.unit)
            kept.samples += [sample._replace(labels={**sample.labels, "node": node})
                             for sample in family.samples]
    answering = GaugeMetricFamily(
        "mailsrv_workers_answering", f"Workers (of {workers}) whose metrics this scrape "
        "holds", value=len(texts))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected([*families.values(), answering]))
    return generate_latest(registry)


class _Collected:
    """A collector of families collected already."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


class WorkersReadiness(_AskedWorkers):
    """/readyz of the parent of [server] workers: its sockets bound, and every worker ready."""

    command = "ready"

    def __init__(self, sockets, reactor, listeners):
        super().__init__(sockets, reactor)
        self.listeners = listeners

    def page(self, answers):
        problems = [f"{service.listener.name}: not listening" for service in self.listeners
                    if service.port is None]
        for node, answer in answers.items():
            if isinstance(answer, ControlError):
                problems.append(f"{node}: not answering ({answer})")
            else:
                problems += [f"{node}: {problem}" for problem in answer["problems"]]
        if problems:
            return 503, ("\n".join(problems) + "\n").encode("utf-8")
        return 200, b"ready\n"


def site(readiness, metrics=None):
    """@param metrics: the /metrics resource; prometheus_client's by default."""
    root = resource.Resource()
    root.putChild(b"metrics", metrics or MetricsResource())
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", readiness)
    return server.Site(root)


class MetricsService(service.Service):
    """Serves L{site} on [metrics] endpoint while the server runs."""

    def __init__(self, endpoint, readiness, reactor, metrics=None):
        self.endpoint = endpoint
        self.readiness = readiness
        self.metrics = metrics
        self.reactor = reactor
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        d = endpoints.serverFromString(self.reactor, self.endpoint).listen(
            site(self.readiness, self.metrics))
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
