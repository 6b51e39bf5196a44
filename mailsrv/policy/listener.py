"""
One listener's policy: which checks each hook runs, built from the config
(L{build}: the one place that knows every check; the checks know none of
each other), and L{ListenerPolicy}, what the protocol asks at each hook.
"""

from dataclasses import replace

from twisted.internet import defer, endpoints

from mailsrv.address import domain_of, normalise
from mailsrv.config import DNSSettings
from mailsrv.directory.listfile import WatchedFile
from mailsrv.directory.senderlist import SenderList, parse_kill_list, parse_whitelist
from mailsrv.gather import gather
from mailsrv.netaddr import ListedClients
from mailsrv.policy import apply, bayes, dkimverify, hooks
from mailsrv.policy.actions import Action, parse_action
from mailsrv.policy.checks import spf, validation
from mailsrv.policy.checks.attachments import BlockedAttachments
from mailsrv.policy.checks.clamav import ClamAVScanner
from mailsrv.policy.checks.dkim import DKIMFilter
from mailsrv.policy.checks.dmarc import DMARCFilter
from mailsrv.policy.checks.dnsbl import DNSBL, DNSBLFilter
from mailsrv.policy.checks.html import HTMLFeatures
from mailsrv.policy.checks.mime import BrokenMIME
from mailsrv.policy.checks.phrases import PhraseFilter
from mailsrv.policy.checks.urls import URLFilter
from mailsrv.policy.checks.statistical import StatisticalFilter
from mailsrv.policy.checks.received import ReceivedIPs
from mailsrv.policy.checks.rspamd import RspamdScanner, quiet_agent
from mailsrv.policy.checks.recipient import (
    ListPosting,
    LocalRecipient,
    RecipientLimit,
    RelayPermission,
    RoutingTricksRefused,
)
from mailsrv.policy.checks.sender import (
    AuthRequired,
    KilledSender,
    LocalSenderMustAuthenticate,
    NullSenderRefused,
    SenderDomainExists,
    SenderOwnedByUser,
    ValidSender,
)
from mailsrv.policy.hooks import BODY, HEADER, RECIPIENT, SENDER
from mailsrv.policy.lists import read_phrases, read_urls, watched
from mailsrv.policy.judgement import NOT_WHITELISTED, SKIPPED, Judgement
from mailsrv.policy.standing import Standing
from mailsrv.policy.whitelist import ClientWhitelist, SenderWhitelist, Whitelists


class ListenerPolicy:
    """
    The checks of one listener's hooks, of two kinds. A hook's gates run
    first, in order (L{hooks.run}): the first refusal refuses the command
    with its own reply. Then its filters run together: each accepts with
    a L{mailsrv.policy.verdict.Finding}, and the findings add up in the
    message's L{Judgement}, whose action L{apply} carries out.

    @param gates: hook -> the checks that may refuse it.
    @param filters: hook -> the filter checks (sender: the connection
        filters; header: they see the header section, and judge the
        message even when its client skips the others; body: they see the
        whole message).
    @param standing: the listener's L{Standing}: authenticated and trusted
        clients skip the connection filters.
    @param subject_prefix: [antispam] subject_prefix, for the subject action.
    @param threshold: the count of counted findings that makes a message spam.
    @param whitelists: the L{Whitelists}, or L{None}.
    @param content_for: senders whose mail the content filters judge even
        when their client skips the others ([antispam]
        content_for_authenticated): C{content_for(session, transaction)},
        or L{None} for none.
    @param outbound_action: with [antispam] outbound, the
        L{mailsrv.policy.actions.Action} for spam that such clients send to
        remote domains (the content filters judge it); L{None}: off.
    """

    def __init__(self, gates, filters, standing, subject_prefix="[SPAM] ", threshold=1,
                 whitelists=None, content_for=None, outbound_action=None):
        self.gates = {hook: list(gates.get(hook, ())) for hook in (SENDER, RECIPIENT)}
        self.filters = {hook: tuple(filters.get(hook, ())) for hook in (SENDER, HEADER, BODY)}
        self.standing = standing
        self.subject_prefix = subject_prefix
        self.threshold = threshold
        self.whitelists = whitelists
        self.content_for = content_for
        self.outbound_action = outbound_action
        self._judges = any(self.filters.values())

    def sender(self, session, transaction):
        """
        MAIL FROM: the sender gates, then the connection filters. An
        accepted sender's transaction keeps the judgement.

        @return: a L{Verdict}, or a Deferred of one.
        """
        verdict = hooks.run(self.gates[SENDER], session, transaction, transaction.sender)
        if isinstance(verdict, defer.Deferred):
            return verdict.addCallback(self._judge_sender, session, transaction)
        return self._judge_sender(verdict, session, transaction)

    def _judge_sender(self, verdict, session, transaction):
        if not verdict.accepted or not self._judges:  # no Deferred needed
            return verdict
        d = self._judge(session, transaction)
        return d.addCallback(self._sender_judged, transaction, verdict)

    def judgement(self, session, transaction):
        """A Deferred of the connection filters' L{Judgement} at MAIL FROM (gates passed)."""
        if not self._judges:
            return defer.succeed(SKIPPED)
        return self._judge(session, transaction)

    def groups(self, transaction):
        """C{(policy, transaction)} of each copy of the message: this one, all of it."""
        return [(self, transaction)]

    def _sender_judged(self, judgement, transaction, verdict):
        refusal = apply.at_sender(judgement)
        if refusal is not None:
            return refusal
        transaction.judgement = judgement
        return verdict

    @defer.inlineCallbacks
    def _judge(self, session, transaction):
        """The connection filters' L{Judgement} (L{SKIPPED}: nothing to check)."""
        skipped = yield self.standing.skips_antispam(session)
        if skipped and not (self.filters[HEADER] or self.filters[BODY]):
            return SKIPPED
        whitelist = NOT_WHITELISTED
        if self.whitelists is not None:
            whitelist = yield self.whitelists.match(session, transaction)
        judged_as_any = not skipped or (self.content_for is not None
                                        and self.content_for(session, transaction))
        # Our own users' mail that leaves: judged with the outbound action.
        leaving = None if judged_as_any else self.outbound_action
        content = not whitelist.content and (judged_as_any or leaving is not None)
        judgement = Judgement(checked=not skipped, threshold=self.threshold, whitelist=whitelist,
                              content=content, outbound_action=leaving)
        if skipped or whitelist.connection or not self.filters[SENDER]:
            return judgement
        verdicts = yield _together(self.filters[SENDER], session, transaction,
                                   transaction.sender)
        return judgement.adding(verdicts)

    def recipient(self, session, transaction, recipient):
        """RCPT TO: a L{Verdict}, or a Deferred of one."""
        return hooks.run(self.gates[RECIPIENT], session, transaction, recipient)

    def reads_header(self, judgement):
        """Whether L{header} must see the header section before it is written."""
        return bool(self.filters[HEADER]) and not judgement.whitelist.connection

    def header(self, judgement, session, transaction, header):
        """
        @param judgement: the transaction's so far.
        @param header: the message's header section (bytes).
        @return: a Deferred of the L{Judgement} with the header filters' findings.
        """
        d = _together(self.filters[HEADER], session, transaction, header)
        return d.addCallback(_added_to, judgement)

    def reads_body(self, judgement, transaction):
        """
        Whether L{body} must see the whole message before anything is
        written: mail from a client that skips the filters only when it
        leaves ([antispam] outbound).
        """
        return (bool(self.filters[BODY]) and judgement.content
                and (judgement.outbound_action is None
                     or bool(transaction.remote_addresses())))

    def body(self, judgement, session, transaction, message):
        """
        @param message: the L{hooks.Message}.
        @return: a Deferred of the L{Judgement} with the body filters' findings.
        """
        d = _together(self.filters[BODY], session, transaction, message)
        return d.addCallback(_added_to, judgement)

    def begin(self, judgement, session, queue_id, authserv_id, write):
        """L{apply.begin} with this listener's subject prefix."""
        return apply.begin(judgement, session, queue_id, self.subject_prefix, authserv_id,
                           write)

    def end(self, judgement, session, transaction, queue_id):
        """L{apply.at_end}: a L{Verdict} when the message goes no further, else L{None}."""
        return apply.at_end(judgement, session, transaction, queue_id)


class DomainPolicies:
    """
    The policy of a listener where some domains have [antispam.*] sections
    of their own (docs/filters.md, "Per-domain settings"): a
    L{ListenerPolicy} for each different set, and one message judged as
    one copy per set of its recipients (L{groups}).

    The gates are the server's. The connection filters of every set judge
    the client at MAIL FROM; their refusal refuses MAIL FROM when every
    set refuses, else each RCPT TO of a set that refuses.

    @param everywhere: the policy of the global sections (remote
        recipients and domains without sections of their own).
    @param by_domain: domain -> its L{ListenerPolicy}.
    @ivar standing: the server's L{Standing}, as every set's.
    """

    def __init__(self, everywhere, by_domain):
        self.everywhere = everywhere
        self.standing = everywhere.standing
        self.by_domain = by_domain
        self.policies = list(dict.fromkeys([everywhere, *by_domain.values()]))

    def policy_of(self, address):
        """The L{ListenerPolicy} of mail to C{address} (as RCPT TO wrote it)."""
        return self.by_domain.get(domain_of(address), self.everywhere)

    def sender(self, session, transaction):
        """MAIL FROM: the server's gates, then every set's connection filters."""
        verdict = hooks.run(self.everywhere.gates[SENDER], session, transaction,
                            transaction.sender)
        if isinstance(verdict, defer.Deferred):
            return verdict.addCallback(self._judge_sender, session, transaction)
        return self._judge_sender(verdict, session, transaction)

    def _judge_sender(self, verdict, session, transaction):
        if not verdict.accepted:
            return verdict
        d = gather([p.judgement(session, transaction) for p in self.policies])
        return d.addCallback(self._sender_judged, transaction, verdict)

    def _sender_judged(self, judgements, transaction, verdict):
        refusals = [apply.at_sender(judgement) for judgement in judgements]
        if all(refusals):
            return refusals[0]
        transaction.judgements = dict(zip(self.policies, judgements))
        transaction.judgement = judgements[0]
        return verdict

    def recipient(self, session, transaction, recipient):
        """RCPT TO: the server's gates, then the refusal of the recipient's set, if any."""
        verdict = hooks.run(self.everywhere.gates[RECIPIENT], session, transaction, recipient)
        if isinstance(verdict, defer.Deferred):
            return verdict.addCallback(self._recipient_judged, transaction, recipient)
        return self._recipient_judged(verdict, transaction, recipient)

    def _recipient_judged(self, verdict, transaction, recipient):
        if not verdict.accepted:
            return verdict
        judgement = transaction.judgements.get(self.policy_of(recipient.address), SKIPPED)
        return apply.at_sender(judgement) or verdict

    def groups(self, transaction):
        """
        C{(policy, transaction)} of each copy of the message: the
        recipients of each set, with that set's judgement so far.
        """
        recipients = {}
        for recipient in transaction.recipients:
            recipients.setdefault(self.policy_of(recipient.address), []).append(recipient)
        return [(policy, replace(transaction, recipients=group,
                                 judgement=transaction.judgements.get(policy, SKIPPED)))
                for policy, group in recipients.items()]


def _together(checks, session, transaction, subject):
    """
    A Deferred of the verdicts of C{checks}, run at once; it fails as the
    first check that fails (the others' failures are not logged again).
    Checks that answer at once (the content filters on a small message)
    cost no Deferred each.
    """
    answers = []
    try:
        for check in checks:
            answers.append(check.check(session, transaction, subject))
    except Exception:
        for answer in answers:  # (their failures would be unhandled errors)
            if isinstance(answer, defer.Deferred):
                answer.addErrback(lambda _: None)
        return defer.fail()
    if not any(isinstance(answer, defer.Deferred) for answer in answers):
        return defer.succeed(answers)
    return gather([a if isinstance(a, defer.Deferred) else defer.succeed(a) for a in answers])


def _added_to(verdicts, judgement):
    """C{judgement} with the findings of C{verdicts}, as it was when there are none."""
    if any(v.finding is not None for v in verdicts):
        return judgement.adding(verdicts)
    return judgement


def build(server, listener, clock):
    """
    The policy of one listener, from the config: a L{ListenerPolicy}, or
    a L{DomainPolicies} when some domains have [antispam.*] sections of
    their own. The filters' actions, written as text in the config, are
    parsed here (preflight refused bad ones).
    """
    standing = _standing(server, listener)
    gates = {SENDER: _sender_gates(server, listener, standing),
             RECIPIENT: _recipient_gates(server, standing)}
    checks = _Checks(server, standing, clock)
    everywhere = _policy(server.settings.antispam, gates, standing, checks)
    groups = {}  # one policy for each different set of sections
    by_domain = {}
    for domain in server.settings.per_domain:
        if domain.antispam is not None:
            key = replace(domain.antispam, actions=())
            if key not in groups:
                groups[key] = _policy(domain.antispam, gates, standing, checks)
            by_domain[domain.name] = groups[key]
    return DomainPolicies(everywhere, by_domain) if by_domain else everywhere


def _policy(settings, gates, standing, checks):
    """The L{ListenerPolicy} of one L{mailsrv.config.AntispamSettings}."""
    filters = {SENDER: [], HEADER: [], BODY: content_filters(settings, checks.clock,
                                                             checks.memo)}
    threshold = 1
    timeout = checks.server.settings.dns.timeout
    if settings.dnsbl is not None:
        dnsbl = checks.dnsbl(settings.dnsbl)
        filters[SENDER].append(dnsbl)
        threshold, timeout = settings.dnsbl.threshold, settings.dnsbl.timeout
        if settings.dnsbl.received_headers:
            filters[HEADER].append(checks.memo(
                ("received", settings.dnsbl),
                lambda: ReceivedIPs(checks.server.trusted, dnsbl.check_received)))
    if settings.validation is not None:
        filters[SENDER].append(checks.memo(
            ("validation", settings.validation, timeout),
            lambda: validation.ValidationFilter(
                _validation_tests(checks.server, settings.validation), timeout, checks.clock)))
    if settings.spf is not None:  # (pyspf's DNS: service.build_mail_server installs it)
        filters[SENDER].append(checks.memo(settings.spf, lambda: _spf(checks.server,
                                                                      settings.spf)))
    filters[BODY].extend(_authentication(settings, checks))
    return ListenerPolicy(gates, filters, standing, settings.subject_prefix, threshold,
                          checks.whitelists(settings), _content_for(settings),
                          Action(settings.outbound_action) if settings.outbound else None)


class _Checks:
    """
    What L{build} makes checks with, and the checks it made: a section
    that several domains share (the global one most often) is one check
    object, with one copy of its lists and one set of connections.
    """

    def __init__(self, server, standing, clock):
        self.server = server
        self.standing = standing
        self.clock = clock
        self._made = {}

    def memo(self, section, make):
        """The check of C{section} (a settings value, hashable), made once."""
        if section not in self._made:
            self._made[section] = make()
        return self._made[section]

    def dnsbl(self, settings):
        def make():
            lists = [DNSBL(bl.zone, bl.name, bl.server, bl.kind, bl.codes,
                           parse_action(bl.action), bl.lookup)
                     for bl in settings.lists]
            return DNSBLFilter(lists, _resolvers(self.server), settings.timeout, self.clock)
        return self.memo(settings, make)

    def whitelists(self, settings):
        """The whitelists (preflight refused bad files before start-up builds them)."""
        server, clock = self.server, self.clock
        lists = []
        if settings.spamskip is not None:
            lists.append(self.memo(("spamskip", settings.spamskip), lambda: ClientWhitelist(
                ListedClients((), settings.spamskip.file, server.resolvers(server.settings.dns),
                              clock), settings.spamskip)))
        if settings.whitelist is not None:
            lists.append(self.memo(("whitelist", settings.whitelist), lambda: SenderWhitelist(
                SenderList(settings.whitelist.file, parse_whitelist, clock),
                settings.whitelist)))
        return Whitelists(lists, server.directory, self.standing) if lists else None


def _authentication(settings, checks):
    """
    The body hook's DKIM and DMARC checks, sharing one verification of the
    message (L{dkimverify.Verifier}).
    """
    if settings.dkim is None and settings.dmarc is None:
        return []
    server = checks.server
    resolver = server.resolvers(server.settings.dns)
    limit = dkimverify.MAX_SIGNATURES if settings.dkim is None else \
        settings.dkim.max_signatures
    verifier = checks.memo(("dkim verifier", limit),
                           lambda: dkimverify.Verifier(resolver, limit))
    made = []
    if settings.dkim is not None:
        actions = {result: parse_action(text) for result, text in settings.dkim.actions}
        made.append(checks.memo(settings.dkim, lambda: DKIMFilter(verifier,
                                                                  actions.__getitem__)))
    if settings.dmarc is not None:
        actions = {outcome: parse_action(text) for outcome, text in settings.dmarc.actions}
        spf_timeout = settings.spf.timeout if settings.spf is not None else 20
        made.append(checks.memo(settings.dmarc, lambda: DMARCFilter(
            verifier, resolver, actions, server.settings.hostname, spf_timeout,
            settings.dmarc.trusted_sealers)))
    return made


def _spf(server, settings):
    actions = {result: parse_action(text) for result, text in settings.actions}
    return spf.SPFFilter(actions.__getitem__, server.settings.hostname, settings.timeout)


def _content_for(settings):
    """
    [antispam] content_for_authenticated: the content filters judge the
    mail of clients that skip the others, but not that of C{admins} (by
    login or envelope sender).
    """
    if not settings.content_for_authenticated:
        return None
    admins = frozenset(settings.admins)

    def judged(session, transaction):
        return not ({normalise(session.user or ""), normalise(transaction.sender)} & admins)
    return judged


def _made(section, make):
    """L{content_filters}' default memo: every check is made."""
    return make()


def content_filters(settings, clock, memo=_made):
    """
    The body hook's filters: the content filters share one analysis of the
    message (Message.judged); the scanners (clamav, rspamd) read its bytes.

    @param clock: the reactor (a Clock in tests): the scanners connect with it.
    @param memo: C{memo(section, make)}: the check of a section (L{_Checks.memo}).
    """
    filters = []
    if settings.statistical is not None:
        statistical = settings.statistical
        filters.append(memo(statistical, lambda: StatisticalFilter(
            WatchedFile(statistical.table, bayes.Table.parse, clock),
            WatchedFile(statistical.exclude, bayes.parse_exclude, clock),
            statistical.threshold, parse_action(statistical.action),
            statistical.subject_prefix)))
    if settings.phrases is not None:
        phrases = settings.phrases
        filters.append(memo(phrases, lambda: PhraseFilter(
            watched(phrases.file, read_phrases, clock), phrases.normalize, phrases.scan,
            parse_action(phrases.action), phrases.subject_prefix)))
    if settings.urls is not None:
        urls = settings.urls
        filters.append(memo(urls, lambda: URLFilter(
            watched(urls.file, read_urls, clock), urls.scan, parse_action(urls.action),
            urls.subject_prefix)))
    if settings.html is not None:
        html = settings.html
        filters.append(memo(html, lambda: HTMLFeatures(
            html.features, html.min_features, parse_action(html.action),
            html.subject_prefix)))
    if settings.mime is not None:
        mime = settings.mime
        filters.append(memo(mime, lambda: BrokenMIME(parse_action(mime.action),
                                                     mime.subject_prefix)))
    if settings.attachments is not None:
        attachments = settings.attachments
        filters.append(memo(attachments, lambda: BlockedAttachments(
            attachments.extensions, attachments.content_types,
            parse_action(attachments.action), attachments.subject_prefix)))
    if settings.clamav is not None:
        clamav = settings.clamav
        filters.append(memo(clamav, lambda: ClamAVScanner(
            endpoints.clientFromString(clock, clamav.endpoint), clamav.endpoint,
            clamav.timeout, clamav.on_error, parse_action(clamav.action),
            clamav.subject_prefix, clock)))
    if settings.rspamd is not None:
        rspamd = settings.rspamd
        filters.append(memo(rspamd, lambda: RspamdScanner(
            quiet_agent(clock, rspamd.timeout), rspamd.url, rspamd.timeout, rspamd.on_error,
            parse_action(rspamd.action), rspamd.subject_prefix, clock)))
    return filters


def _standing(server, listener):
    settings = server.settings
    return Standing(settings.relay.mode, server.trusted, server.sessions,
                    settings.pop_before_smtp.enabled, settings.relay.trusted_bypass_antispam,
                    server.access_for(listener))


def _kill_list(server):
    """The kill list of [access] kill_file (preflight refused a bad one before start-up)."""
    return SenderList(server.settings.access.kill_file, parse_kill_list, server.clock)


def _sender_gates(server, listener, standing):
    """The MAIL FROM checks of one listener, in order: DNS last."""
    access = server.settings.access
    pop = server.settings.pop_before_smtp
    windows_count = pop.enabled and pop.counts_as_auth
    checks = []
    require_auth = listener.access.require_auth or (
        "any" if listener.role == "submission" else "")
    if require_auth:
        checks.append(AuthRequired(require_auth, server.access_for(listener),
                                   server.sessions if windows_count else None))
    if access.check_valid_sender:
        checks.append(ValidSender())
    if access.refuse_null_sender:
        checks.append(NullSenderRefused())
    if access.kill_file is not None:
        checks.append(KilledSender(_kill_list(server)))
    if access.sender_must_be_owned:
        checks.append(SenderOwnedByUser(server.directory, windows_count))
    if listener.role == "mx" and access.local_sender_must_auth:
        checks.append(LocalSenderMustAuthenticate(server.directory, standing))
    if access.verify_sender_domain:
        checks.append(SenderDomainExists(server.directory,
                                         server.resolvers(server.settings.dns)))
    return checks


def _recipient_gates(server, standing):
    """The RCPT TO checks of one listener, in order: cheapest first."""
    settings = server.settings
    checks = [
        RecipientLimit(settings.access.max_recipients),
        RoutingTricksRefused(),
        LocalRecipient(server.directory),
    ]
    if not settings.lists.accept_remote:
        checks.append(ListPosting(server.directory))
    checks.append(RelayPermission(
        standing, (domain for domain, _ in settings.delivery.transports),
        settings.relay.refusal_text,
    ))
    return checks


def _validation_tests(server, settings):
    resolver = server.resolvers(server.settings.dns)
    tests = {
        "helo-fqdn": lambda action: validation.HeloIsFQDN(action),
        "helo-ours": lambda action: validation.HeloNotOurs(
            server.settings.hostname, server.settings.local_domains, resolver, action),
        "reverse-dns": lambda action: validation.ReverseDNS(resolver, action),
        "fcrdns": lambda action: validation.ForwardConfirmed(resolver, action),
    }
    return tuple(tests[name](parse_action(action)) for name, action in settings.tests)


def _resolvers(server):
    dns_settings = server.settings.dns

    def resolver(bl):
        if bl.server is None:
            return server.resolvers(dns_settings)
        return server.resolvers(DNSSettings((bl.server,), dns_settings.timeout))
    return resolver
