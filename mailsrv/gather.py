"""
One Deferred for several: the results of all, or the first failure as
itself (not wrapped in Twisted's FirstError), the others' failures
consumed so that none is logged as unhandled.
"""

from twisted.internet import defer


def gather(deferreds):
    """A Deferred of the results of C{deferreds} in order, failing as the first that fails."""
    d = defer.gatherResults(deferreds, consumeErrors=True)
    return d.addErrback(lambda failure: failure.value.subFailure)
