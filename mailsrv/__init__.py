"""mailsrv: a mail server for small organisations, on Twisted."""

__version__ = "0.1.0"
