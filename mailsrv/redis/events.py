"""
New-mail events between nodes (docs/scale-out.md): a delivery on one node
wakes the IDLE sessions of every other node at once, through Redis pub/sub.

Each delivery the store is told of (L{mailsrv.store.mailstore.MailStore.notify})
is published on C{mailsrv:delivered:DB} as JSON C{[sender, user, folder,
names]}; every node subscribes (on a connection of its own: a subscribed
connection takes no other command) and hands other nodes' deliveries to
its store. Local notifications never go through Redis: while Redis is away
they work as before, and the IDLE sessions of other nodes see the mail at
their next poll; when the subscription is back, every open folder is
synced once for what was missed.
"""

import json

from twisted.application import service
from twisted.logger import Logger

from mailsrv.redis.link import RedisLink, RedisUnavailable
from mailsrv.redis.sessions import PREFIX

log = Logger()


class NewMailEvents(service.Service):
    """
    @ivar redis: the node's L{RedisLink}, which publishes.
    @ivar subscriber: the L{RedisLink} that listens.
    @ivar sender: this node's token: its own events are not taken in again.
    """

    def __init__(self, redis, store, sender):
        self.redis = redis
        self.store = store
        self.sender = sender
        self.channel = f"{PREFIX}delivered:{redis.address.db}"
        # (reaching the same Redis as the main link: with Sentinel, its master)
        self.subscriber = RedisLink(redis.address, redis.timeout, redis.reactor,
                                    redis.endpoint, on_message=self._received,
                                    tls=redis.tls)
        self.subscriber.observe(self._subscriber_changed)
        self._missed = False  # the subscription was lost: events may have gone by

    def startService(self):
        super().startService()
        self.subscriber.startService()

    def stopService(self):
        super().stopService()
        self.subscriber.stopService()

    def publish(self, user, folder, names):
        """Tell the other nodes that C{names} were delivered into C{user}'s C{folder}."""
        message = json.dumps([self.sender, user, folder, list(names)])
        d = self.redis.execute("PUBLISH", self.channel, message)
        d.addErrback(lambda failure: failure.trap(RedisUnavailable))  # (the link logged it)
        d.addErrback(lambda failure: log.failure("new-mail event not published", failure))

    def _subscriber_changed(self, up):
        if not up:
            self._missed = True
            return
        d = self.subscriber.execute("SUBSCRIBE", self.channel)
        d.addCallback(self._subscribed)
        d.addErrback(lambda failure: failure.trap(RedisUnavailable))
        d.addErrback(lambda failure: log.failure("new-mail events: SUBSCRIBE", failure))

    def _subscribed(self, _):
        if self._missed:
            self._missed = False
            self.store.sync_open_folders()

    def _received(self, channel, message):
        try:
            sender, user, folder, names = json.loads(message)
            if not (isinstance(user, str) and isinstance(folder, str)
                    and all(isinstance(name, str) and "/" not in name
                            and not name.startswith(".") for name in names)):
                raise ValueError("not a user, a folder and file names")
        except (ValueError, TypeError) as e:
            log.warn("new-mail events: ignoring a message that does not parse ({error})",
                     error=e)
            return
        if sender != self.sender:
            self.store.delivered_elsewhere(user, folder, names)
