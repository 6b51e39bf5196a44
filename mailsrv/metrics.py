"""
What the server counts, for Prometheus ([metrics] endpoint, docs/config.md,
"Metrics"): the metrics are prometheus_client's, in its default registry
(with its process metrics: CPU, memory, open files), each counted where
it happens; mailsrv/metricsweb.py serves them. Importing this module loads
neither Twisted nor the reactor: the policy and the protocols count.

Labels are few and fixed (a listener's name, an outcome, an enhanced
status code): a label never takes a value a client chose, so the number
of series does not grow with traffic.
"""

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # (a *_created series beside every counter: noise here)

CONNECTIONS = Counter("mailsrv_connections", "Connections accepted, by listener",
                      ["listener"])
OPEN_CONNECTIONS = Gauge("mailsrv_open_connections", "Connections open now, by listener",
                         ["listener"])
CONNECTIONS_REFUSED = Counter("mailsrv_connections_refused",
                              "Connections turned away (busy, denied, later, proxy), by listener",
                              ["listener", "reason"])
SMTP_REFUSALS = Counter("mailsrv_smtp_refusals",
                        "MAIL FROM and RCPT TO refused, by command and enhanced status",
                        ["command", "status"])
MESSAGES = Counter("mailsrv_messages",
                   "Messages at the end of DATA: accepted, refused or deferred, by status",
                   ["outcome", "status"])
INTAKE_SECONDS = Histogram("mailsrv_intake_seconds",
                           "From the end of DATA to its reply (judged, written, fsync'd)",
                           buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
DELIVERIES = Counter("mailsrv_deliveries", "Delivery attempts of queued recipients, by "
                     "outcome", ["outcome"])
DELIVERY_SECONDS = Histogram("mailsrv_delivery_seconds",
                             "One delivery of a queued message to one route (all its hops)",
                             buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
QUEUE_MESSAGES = Gauge("mailsrv_queue_messages", "Messages in the queue")
QUEUE_OLDEST = Gauge("mailsrv_queue_oldest_seconds", "Age of the oldest queued message")
FILTER_VERDICTS = Counter("mailsrv_filter_verdicts",
                          "Judged messages, by spam or not and the action taken",
                          ["spam", "action"])
LOGINS = Counter("mailsrv_logins", "Logins, by protocol and outcome (ok, failed, "
                 "throttled, in use, broken)", ["protocol", "outcome"])
TLS_HANDSHAKES = Counter("mailsrv_tls_handshakes", "TLS handshakes of clients, by outcome",
                         ["outcome"])


def outcome_of(code):
    """A reply code's outcome label."""
    return "accepted" if code < 400 else "deferred" if code < 500 else "refused"
