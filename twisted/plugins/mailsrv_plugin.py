"""
The twistd plugin: `twistd -n mailsrv --config etc/mailsrv.toml`.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", "etc/mailsrv.toml", "Path to mailsrv.toml."],
        ["worker", None, 0, "(started by mailsrv itself) run as this worker of "
         "[server] workers.", int],
    ]


@implementer(IServiceMaker, IPlugin)
class MailsrvServiceMaker:
    tapname = "mailsrv"
    description = "Mail server: SMTP, submission, POP3 and IMAP with one config file."
    options = Options

    def makeService(self, options):
        from mailsrv.service import make_service_or_exit

        return make_service_or_exit(options["config"], options["worker"])


serviceMaker = MailsrvServiceMaker()
