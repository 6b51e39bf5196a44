"""
The durable queue: messages for remote recipients wait here, on disk, until a
courier has delivered them (see docs/queue.md for the on-disk format).
"""
