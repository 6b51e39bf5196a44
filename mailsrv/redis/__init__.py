"""
The state several mailsrv nodes share through Redis ([sessions] backend =
"redis", docs/scale-out.md): one connection (L{mailsrv.redis.link}) and the
session store over it (L{mailsrv.redis.sessions}). Nothing here knows a
protocol, the store or the queue: they reach it through the interfaces the
in-memory backends implement too.
"""
