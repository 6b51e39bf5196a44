"""
The `mailsrv` admin command: check the config, manage users, look at the
queue, keep the content filters' lists.

    mailsrv --config etc/mailsrv.toml check-config
    mailsrv --config etc/mailsrv.toml user add alice@example.test --password-stdin
    mailsrv --config etc/mailsrv.toml import users /etc/dovecot/users --domain example.test
"""

import argparse
import getpass
import json
import mailbox
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
import os
import sys
import time
from pathlib import Path

from twisted.internet import reactor

from mailsrv import __version__, config, dkimkeys
from mailsrv.control import SOCKET_NAME, ControlError, ServerAway, ask
from mailsrv.dkimkeys import KEY_TYPES
from mailsrv.logs import files_of, trace
from mailsrv.directory.listfile import ListFileError, replace_list_file
from mailsrv.address import AddressError, normalise, parse_mailbox
from mailsrv.directory.passwdfile import read_passwd_file
from mailsrv.directory.users import UserDB
from mailsrv.policy.bayes import Table, parse_exclude
from mailsrv.policy.checks.statistical import message_words
from mailsrv.policy.content import parse as parse_content
from mailsrv.policy.checks.urls import links
from mailsrv.policy.lists import KINDS, merge, read_urls
from mailsrv.policy.urlhost import host_of, listed as covered
from mailsrv.admin.explain import explain
from mailsrv.datadir_lock import LOCK_FILE, DataDirInUse, DataDirLock
from mailsrv.store.importer import IMPORT_REQUESTS, ImportReport, request_import, run_import
from mailsrv.store.layout import check_folder_name
from mailsrv.store.mailstore import MailStore
from mailsrv.preflight import check_settings, file_problem, list_files, preflight

DEFAULT_CONFIG = os.environ.get("MAILSRV_CONFIG", "etc/mailsrv.toml")


class CommandError(Exception):
    """Shown to the admin as one line, with a non-zero exit."""


def _parser():
    parser = argparse.ArgumentParser(prog="mailsrv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mailsrv {__version__}")
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                        help=f"path to mailsrv.toml (default: {DEFAULT_CONFIG})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check-config", help="validate the config and its files")
    commands.add_parser("reload", help="make the running server read its config again "
                                       "(as SIGHUP does)")

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "create a user"), ("passwd", "change a password")):
        sub = user.add_parser(action, help=text)
        sub.add_argument("address")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of standard input")
    user.add_parser("del", help="delete a user (the mailbox stays)").add_argument("address")
    user.add_parser("list", help="list users").add_argument(
        "--json", action="store_true", help="one JSON array of {address, source}")

    imports = commands.add_parser(
        "import", help="bring users and their mailboxes from another server").add_subparsers(
        dest="action", required=True, metavar="WHAT")
    import_users = imports.add_parser(
        "users", help="add the users of a Dovecot passwd-file with their hashes "
                      "(user:{SCHEME}hash:...); a bad line stops it unless --skip-bad")
    import_users.add_argument("file", metavar="FILE")
    import_users.add_argument("--domain", help="the domain of user names without @DOMAIN")
    import_users.add_argument("--replace", action="store_true",
                              help="replace the hash of users that exist (default: keep it)")
    import_users.add_argument("--skip-bad", action="store_true",
                              help="import the good lines and skip the bad ones")
    maildir = imports.add_parser(
        "maildir", help="a user's Maildir, or Maildir++ tree with subfolders (Dovecot's): "
                        "every folder, with flags, keywords and Dovecot's UIDs (safe while "
                        "the server runs; a second run adds nothing twice)")
    mbox = imports.add_parser("mbox", help="an mbox file into one of a user's folders (safe "
                                           "while the server runs; nothing twice)")
    mbox.add_argument("--folder", default="INBOX", help="the folder (default INBOX)")
    for sub in (maildir, mbox):
        sub.add_argument("path", metavar="PATH")
        sub.add_argument("--user", required=True, metavar="ADDRESS")

    queue = commands.add_parser("queue", help="look at the outbound queue").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    queue.add_parser("list", help="list queued messages")
    queue.add_parser("flush", help="make every deferred recipient due now")
    queue.add_parser("remove", help="delete a queued message").add_argument("id")
    queue.add_parser("hold", help="stop delivering a queued message").add_argument("id")
    queue.add_parser("release", help="deliver a held message now").add_argument("id")
    queue.add_parser("show", help="one queued message: envelope, each recipient's state "
                                  "and last error, headers").add_argument("id")

    dkim_command = commands.add_parser("dkim", help="DKIM keys and their DNS records")
    dkim_command = dkim_command.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("keygen", "make a key and print the TXT record to publish"),
                         ("check", "look the TXT record up and compare it with the key")):
        sub = dkim_command.add_parser(action, help=text)
        sub.add_argument("domain")
        sub.add_argument("selector")
        sub.add_argument("--key", metavar="PATH",
                         help="the key file (default: dkim/DOMAIN.SELECTOR.key beside the "
                              "config)")
        if action == "keygen":
            sub.add_argument("--type", choices=KEY_TYPES, default="rsa",
                             help="rsa (2048 bits, the default) or ed25519 (RFC 8463)")

    log_command = commands.add_parser("log", help="read the server's log").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    trace = log_command.add_parser("trace", help="every line of one message, by queue ID")
    trace.add_argument("queue_id", metavar="QUEUEID")
    trace.add_argument("files", nargs="*", metavar="FILE",
                       help="log files, or - for standard input (default: [log] file and "
                            "its rotated files)")

    auth = commands.add_parser("auth", help="login lockouts of the running server")
    auth = auth.add_subparsers(dest="action", required=True, metavar="ACTION")
    auth.add_parser("locked", help="the IPs and IP/user pairs locked out, and for how long")
    auth.add_parser("unlock", help="end the lockouts of an IP, a user, or an IP/user key"
                    ).add_argument("target", metavar="IP|USER|KEY")

    lists = commands.add_parser("lists", help="the list files").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    lists.add_parser("check", help="validate every list file and count its entries")

    filters = commands.add_parser("filter", help="the content filters' lists").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    merge = filters.add_parser(
        "merge", help="merge word tables, phrase lists or URL lists into one: counts add up, "
                      "duplicates go, bad entries are reported")
    merge.add_argument("files", nargs="+", metavar="FILE")
    merge.add_argument("-o", "--output", required=True, metavar="OUT")
    merge.add_argument("--kind", choices=KINDS,
                       help="what the files are (default: from OUT's name: *table*, "
                            "*phrase*, *url*)")
    train = filters.add_parser(
        "train", help="teach the statistical filter's word table from Maildir folders or "
                      "mbox files of spam and of good mail")
    train.add_argument("--spam", action="append", default=[], metavar="PATH")
    train.add_argument("--ham", action="append", default=[], metavar="PATH")
    train.add_argument("--table", metavar="PATH",
                       help="the table to add to (default: [antispam.statistical] table)")
    explain = commands.add_parser(
        "explain", help="run the filters on one message, offline, and say what each found "
                        "and what the server would do")
    explain.add_argument("message", metavar="MESSAGE.eml")
    explain.add_argument("--ip", default="192.0.2.1", help="the client's address")
    explain.add_argument("--helo", default="client.example", help="its EHLO name")
    explain.add_argument("--from", dest="sender", metavar="SENDER",
                         help="MAIL FROM (default: the message's From address)")
    explain.add_argument("--to", dest="recipients", action="append", metavar="RECIPIENT",
                         help="RCPT TO, may be repeated (default: the message's To and Cc)")
    seed = filters.add_parser(
        "seed-urls", help="add the hosts the links of spam go to (Maildir folders or mbox "
                          "files) to a URL list")
    seed.add_argument("sources", nargs="+", metavar="PATH")
    seed.add_argument("-o", "--output", metavar="OUT",
                      help="the URL list to add to (default: [antispam.urls] file)")
    seed.add_argument("--min-messages", type=int, default=1, metavar="N",
                      help="only hosts linked from at least N messages (default 1)")
    return parser


def main(argv=None, stdin=None, stdout=None):
    args = _parser().parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        settings = config.load(args.config)
        check_settings(settings, reactor)
        handler = HANDLERS[(args.command, getattr(args, "action", None))]
        handler(settings, args, stdin, stdout)
        stdout.flush()
    except (config.ConfigError, CommandError, ListFileError) as e:
        sys.stderr.write(f"mailsrv: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\nmailsrv: interrupted, nothing changed\n")
        return 130
    except BrokenPipeError:  # (`mailsrv queue list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def check_config(settings, args, stdin, stdout):
    """
    The preflight start-up runs: what fails here stops start-up with the
    same line. Writes nothing.
    """
    notes = preflight(settings, reactor)
    stdout.write(f"{settings.path}: ok, {len(settings.listeners)} listeners\n")
    for listener in settings.listeners:
        stdout.write(f"  {listener.name} (tls {listener.tls})\n")
    for note in notes:
        stdout.write(f"note: {note}\n")


def lists_check(settings, args, stdin, stdout):
    """Every list file: its entry count, or its first error (file:line: problem)."""
    bad = 0
    for listed in list_files(settings, reactor):
        what, path = listed.what, listed.path
        if not path.exists():
            if listed.must_exist:
                bad += 1
                stdout.write(f"{what}: {path}: missing\n")
            else:
                stdout.write(f"{what}: {path}: missing (empty)\n")
            continue
        try:
            entries, skipped = listed.load(path)
        except (ListFileError, OSError, UnicodeDecodeError) as e:
            bad += 1
            stdout.write(f"{what}: {file_problem(e, path)}\n")
        else:
            stdout.write(f"{what}: {path}: {len(entries)} entries\n")
            for problem in skipped:
                stdout.write(f"{what}: {problem} (the server skips this line)\n")
            bad += bool(skipped)
            for line in listed.warnings(entries):
                stdout.write(f"{what}: {line}\n")
    if bad:
        raise CommandError(f"{bad} list file(s) with errors")


def filter_merge(settings, args, stdin, stdout):
    """`filter merge`: the files' entries in one file (written whole or not at all)."""
    kind = args.kind or _kind_of(args.output)
    for path in args.files:
        if not os.path.isfile(path):
            raise CommandError(f"{path}: no such file")
    text, count, problems = merge(kind, args.files)
    for problem in problems:
        stdout.write(f"{problem} (left out)\n")
    try:
        replace_list_file(args.output, text)
    except OSError as e:
        raise CommandError(f"{args.output}: cannot write it ({e.strerror})")
    stdout.write(f"{args.output}: {count} entries from {len(args.files)} files, "
                 f"{len(problems)} left out\n")


def filter_train(settings, args, stdin, stdout):
    """`filter train`: the words of every message given, added to the word table."""
    statistical = settings.antispam.statistical
    if args.table is None and statistical is None:
        raise CommandError("no [antispam.statistical] section: add one, or say --table PATH")
    if not (args.spam or args.ham):
        raise CommandError("say --spam PATH and/or --ham PATH (Maildir folders or mbox files)")
    path = args.table or statistical.table
    table = Table.parse(path)
    exclude = parse_exclude(statistical.exclude) if statistical is not None else frozenset()
    counts = {}
    for spam, sources in ((True, args.spam), (False, args.ham)):
        for source in sources:
            counts[source] = 0
            for data in _messages_in(source):
                table.learn(message_words(parse_content(data), exclude), spam)
                counts[source] += 1
    try:
        table.write(path)
    except OSError as e:
        raise CommandError(f"{path}: cannot write it ({e.strerror}); it is unchanged")
    for source, count in counts.items():
        stdout.write(f"{source}: {count} messages\n")
    stdout.write(f"{path}: {len(table.counts)} words from {table.spam_messages} spam and "
                 f"{table.ham_messages} good messages\n")


def filter_seed_urls(settings, args, stdin, stdout):
    """`filter seed-urls` (IMail's antispamseeder): link hosts of spam, added to a URL list."""
    path = args.output or (settings.antispam.urls.file if settings.antispam.urls else None)
    if path is None:
        raise CommandError("no [antispam.urls] section: add one, or say -o OUT")
    entries, skipped = read_urls(path) if os.path.exists(path) else (frozenset(), [])
    for problem in skipped:
        stdout.write(f"{problem} (left out)\n")
    seen = {}
    for source in args.sources:
        for data in _messages_in(source):
            # (the HREFs and IMG SRCs only: a link's text may show the bank it fakes)
            hosts = {host.removeprefix("www.") for host in map(host_of, links(
                parse_content(data), "html")) if host is not None}
            for host in hosts:
                seen[host] = seen.get(host, 0) + 1
    new = [host for host, count in sorted(seen.items(), key=lambda item: (-item[1], item[0]))
           if count >= args.min_messages and covered(host, entries) is None]
    try:
        replace_list_file(path, "".join(f"{entry}\n" for entry in sorted(entries) + new))
    except OSError as e:
        raise CommandError(f"{path}: cannot write it ({e.strerror}); it is unchanged")
    for host in new:
        stdout.write(f"+ {host} ({seen[host]} messages)\n")
    stdout.write(f"{path}: {len(new)} hosts added, {len(entries) + len(new)} entries\n")


def _run_until(d):
    """
    Run the reactor until C{d} fires; not at all when it already has (the
    work needed no waiting: stopping a reactor that never ran raises).
    """
    if d.called:
        return
    d.addBoth(lambda _: reactor.stop())
    reactor.run(installSignalHandlers=False)


def explain_message(settings, args, stdin, stdout):
    """`explain`: the filters on one message, offline (docs/filters.md, "Explain")."""
    try:
        with open(args.message, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CommandError(f"{args.message}: {e.strerror}")
    header = BytesHeaderParser().parsebytes(data)
    sender = args.sender
    if sender is None:
        sender = parseaddr(header.get("from", ""))[1]
    domain = settings.local_domains[0] if settings.local_domains else settings.hostname
    recipients = args.recipients or [
        address for _, address in getaddresses(header.get_all("to", []) + header.get_all(
            "cc", [])) if address] or [f"postmaster@{domain}"]
    failure = []
    d = explain(settings, reactor, data, args.ip, args.helo, sender, recipients,
                lambda line: stdout.write(line + "\n"))
    d.addErrback(failure.append)
    _run_until(d)
    if failure:
        raise CommandError(f"explain failed: {failure[0].getErrorMessage()}")


def import_mailbox(settings, args, stdin, stdout):
    """
    `import maildir|mbox`: by this process, holding the data_dir lock, when
    no server runs; else by the running server, asked through
    C{data_dir/import/} (docs/store.md, "Importing"); with [server]
    workers, by worker 1.
    """
    try:
        address = parse_mailbox(args.user)
    except AddressError as e:
        raise CommandError(str(e))
    user = address.normalised  # (the name sessions open folders under)
    if address.domain.lower() not in settings.local_domains:
        raise CommandError(f"{address.domain} is not in [domains] local of {settings.path}")
    # (an LDAP or SMTP [auth] source knows its users; the users file does not)
    if settings.auth.source == "file" and not _users(settings).exists(user):
        raise CommandError(f"no such user: {args.user!r}")
    path = os.path.abspath(args.path)
    folder = getattr(args, "folder", "INBOX")
    if folder.upper() != "INBOX":
        try:
            check_folder_name(folder)
        except ValueError as e:
            raise CommandError(f"--folder {folder}: {e}")
    settings = settings.nodes_here()[0]
    lock = DataDirLock(settings)
    try:
        lock.acquire()
    except DataDirInUse as e:
        ok = _import_by_server(settings, args.action, path, user, folder, stdout, e.holder)
    else:
        ok = _import_here(settings, args.action, path, user, folder, stdout)
    if not ok:
        raise CommandError("some messages were not imported (see above)")


def _import_here(settings, kind, path, user, folder, stdout):
    """The import in this process, on its own reactor: no server runs."""
    report = ImportReport(lambda line: stdout.write(line + "\n"))
    store = MailStore(settings.data_dir / "mail", reactor)
    failure = []
    d = run_import(store, kind, path, user, folder, report)
    d.addErrback(failure.append)
    _run_until(d)
    if failure:
        raise CommandError(f"import failed: {failure[0].getErrorMessage()}")
    return not report.failed


def _import_by_server(settings, kind, path, user, folder, stdout, holder):
    """
    Ask the running server to import (it owns the folders' indexes) and
    show what it says as it goes; wait for it as long as it runs.

    @param holder: the PID the data_dir lock file names, for people.
    """
    directory = settings.node_dir / IMPORT_REQUESTS
    try:
        name = request_import(directory, kind, path, user, folder)
    except FileNotFoundError:
        raise CommandError(f"the process that holds the data_dir lock (pid {holder}) takes "
                           f"no imports ({directory} is missing): is it an older mailsrv?")
    request, out, done = (directory / f"{name}.{ext}" for ext in ("json", "out", "done"))
    deadline = time.monotonic() + REQUEST_WAIT
    while request.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        request.unlink()  # not taken: withdrawn, so no later start does it unasked
    except FileNotFoundError:
        pass
    else:
        raise CommandError(f"the process that holds the data_dir lock (pid {holder}: a "
                           f"server, or another mailsrv import) did not take the import "
                           f"within {REQUEST_WAIT} s; nothing was imported")
    shown = 0
    while True:
        finished = done.exists()  # (before reading: the last lines are out by then)
        shown = _show_from(out, shown, stdout)
        if finished:
            break
        if not _server_runs(settings):
            raise CommandError("the server stopped during the import; run it again to "
                               "import the rest (nothing is added twice)")
        time.sleep(0.2)
    ok = done.read_bytes() == b"ok"
    for path in (out, done):
        path.unlink(missing_ok=True)
    return ok


def _show_from(path, offset, stdout):
    """Write the whole lines of C{path} from C{offset} on; @return: the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    whole = data[:data.rfind(b"\n") + 1]
    stdout.write(whole.decode("utf-8", "replace"))
    stdout.flush()
    return offset + len(whole)


def _server_runs(settings):
    """Whether the process named in the data_dir lock file is alive."""
    try:
        pid = int((settings.node_dir / LOCK_FILE).read_text().strip())
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True  # cannot tell: keep waiting
    return True


def _messages_in(source):
    """The messages (bytes) of a Maildir folder or an mbox file."""
    if os.path.isdir(source):
        if not os.path.isdir(os.path.join(source, "cur")):
            raise CommandError(f"{source}: not a Maildir folder (no cur/)")
        box = mailbox.Maildir(source, factory=None, create=False)
    elif os.path.isfile(source):
        box = mailbox.mbox(source, factory=None, create=False)
    else:
        raise CommandError(f"{source}: no such folder or file")
    for key in box.iterkeys():
        try:
            yield box.get_bytes(key)
        except (KeyError, OSError):  # gone meanwhile
            continue


def _kind_of(output):
    """The kind of list file named C{output}, by its name (as the example files are named)."""
    name = os.path.basename(output).lower()
    for kind, part in (("table", "table"), ("phrases", "phrase"), ("urls", "url")):
        if part in name:
            return kind
    raise CommandError(f"{output}: say what the files are: --kind {'|'.join(KINDS)}")


def _read_password(args, stdin):
    if args.password_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif not stdin.isatty():
        raise CommandError("no terminal to ask for the password: pipe it in with "
                           "--password-stdin (printf '%s\\n' \"$PASSWORD\" | mailsrv ... "
                           "--password-stdin)")
    else:
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                raise CommandError("the passwords differ")
        except EOFError:
            raise CommandError("no password given (end of input); nothing changed")
    if not password:
        raise CommandError("empty password")
    return password


def _users(settings):
    return UserDB(settings.users_file, reactor)


def _change_users(users, change, address, *args):
    """
    Apply one change to the users file, telling the admin about the bad
    lines the rewrite drops (the server skips them already).
    """
    try:
        dropped = change(address, *args)
    except OSError as e:
        raise CommandError(f"{users.path}: cannot write it ({e.strerror}); it is unchanged")
    for problem in dropped:
        sys.stderr.write(f"mailsrv: warning: dropped {problem}\n")


def user_add(settings, args, stdin, stdout):
    try:
        address = parse_mailbox(args.address)
    except AddressError as e:
        raise CommandError(str(e))
    if address.domain.lower() not in settings.local_domains:
        raise CommandError(f"{address.domain} is not in [domains] local of {settings.path}")
    users = _users(settings)
    if users.exists(address.normalised):
        raise CommandError(f"{address.normalised} exists already (use: user passwd)")
    _change_users(users, users.set_password, address.normalised, _read_password(args, stdin))
    stdout.write(f"added {address.normalised}\n")


def user_passwd(settings, args, stdin, stdout):
    users = _users(settings)
    if not users.exists(args.address):
        raise CommandError(f"no such user: {args.address!r}")
    _change_users(users, users.set_password, args.address, _read_password(args, stdin))
    stdout.write(f"changed the password of {normalise(args.address)}\n")


def user_del(settings, args, stdin, stdout):
    users = _users(settings)
    if not users.exists(args.address):
        raise CommandError(f"no such user: {args.address!r}")
    _change_users(users, users.delete, args.address)
    stdout.write(f"deleted {normalise(args.address)} (the mailbox stays on disk)\n")


def user_list(settings, args, stdin, stdout):
    addresses = _users(settings).addresses()
    if args.json:
        source = "users file"
        stdout.write(json.dumps([{"address": a, "source": source} for a in addresses]) + "\n")
        return
    for address in addresses:
        stdout.write(address + "\n")


def import_users(settings, args, stdin, stdout):
    """
    `import users`: the users of a Dovecot passwd-file, whose hashes the
    server verifies and turns into argon2id at their first login. All
    lines or nothing, unless --skip-bad.
    """
    if not os.path.isfile(args.file):
        raise CommandError(f"{args.file}: no such file")
    try:
        entries, problems = read_passwd_file(args.file, args.domain,
                                             settings.is_local_domain)
    except OSError as e:
        raise CommandError(f"{args.file}: cannot read it ({e.strerror})")
    for problem in problems:
        stdout.write(f"{problem}{' (skipped)' if args.skip_bad else ''}\n")
    if problems and not args.skip_bad:
        raise CommandError(f"{len(problems)} bad line(s) in {args.file}, nothing imported "
                           "(--skip-bad imports the other lines)")
    users = _users(settings)
    existing = {entry.address for entry in entries if users.exists(entry.address)}
    new = {entry.address: entry.stored for entry in entries
           if args.replace or entry.address not in existing}
    if new:
        _change_users(users, users.set_hashes, new)
    kept = 0 if args.replace else len(existing)
    replaced = f"{len(existing)} replaced, " if args.replace else ""
    stdout.write(f"{len(entries) - len(existing)} added, {replaced}{kept} kept, "
                 f"{len(problems)} skipped\n")


def _spools(settings):
    """The spool of each node of this config on this machine (L{config.Settings.nodes_here})."""
    from mailsrv.queue.spool import Spool

    return [Spool(node.node_dir / "queue") for node in settings.nodes_here()]


def _spool_holding(settings, queue_id):
    """The spool that holds C{queue_id}, or L{None}."""
    for spool in _spools(settings):
        if queue_id in spool.ids():
            return spool
    return None


def queue_list(settings, args, stdin, stdout):
    listed = [(spool, queue_id) for spool in _spools(settings) for queue_id in spool.ids()]
    now = time.time()
    for spool, queue_id in listed:
        try:
            envelope = spool.load(queue_id)
        except FileNotFoundError:
            continue  # delivered since the listing
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(envelope.created))
        held = "  HELD" if envelope.held else ""
        stdout.write(f"{queue_id}  {created}  age {_age(now - envelope.created)}  "
                     f"<{envelope.sender}>{held}\n")
        for rcpt in envelope.recipients:
            detail = f"  ({rcpt.last_error})" if rcpt.last_error else ""
            stdout.write(f"    {rcpt.state:9} {rcpt.address}{detail}\n")
    stdout.write(f"{len(listed)} queued\n")


def _age(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def queue_show(settings, args, stdin, stdout):
    """One queued message, all the queue knows of it (docs/queue.md, "Commands")."""
    spool = _spool_holding(settings, args.id)
    try:
        if spool is None:
            raise FileNotFoundError(args.id)
        envelope = spool.load(args.id)
    except (FileNotFoundError, ValueError):
        raise CommandError(f"no queued message {args.id}")
    now = time.time()
    path = spool.message_path(envelope.id)
    size = path.stat().st_size if path.exists() else 0
    lines = [
        f"id: {envelope.id}",
        f"sender: <{envelope.sender}>" + (f" (a {envelope.bounce})" if envelope.bounce else ""),
        f"queued: {_when(envelope.created)} (age {_age(now - envelope.created)})",
        f"from: {envelope.client_ip or '-'} (helo {envelope.helo or '-'})",
        f"size: {size} bytes",
        f"held: {'yes (mailsrv queue release ' + envelope.id + ')' if envelope.held else 'no'}",
        "recipients:",
    ]
    for rcpt in envelope.recipients:
        due = ""
        if rcpt.state in ("pending", "deferred") and rcpt.next_attempt:
            due = f", next attempt {_when(rcpt.next_attempt)}"
        lines.append(f"  <{rcpt.address}>: {rcpt.state}, {rcpt.attempts} attempts{due}")
        if rcpt.last_error:
            lines.append(f"    last error: {rcpt.last_error}")
    lines.append("headers:")
    if path.exists():
        from mailsrv.queue.bounce import read_headers
        headers = read_headers(path).decode("utf-8", "replace")
        lines += ["  " + line for line in headers.splitlines()]
    stdout.write("\n".join(lines) + "\n")


def _when(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _dkim_key_path(settings, args):
    if args.key:
        return Path(args.key)
    return settings.path.parent / "dkim" / f"{args.domain.lower()}.{args.selector}.key"


def dkim_keygen(settings, args, stdin, stdout):
    """`dkim keygen`: a new key (0600, never over a file) and its record (mailsrv/dkimkeys.py)."""
    domain = args.domain.lower().rstrip(".")
    if not settings.is_local_domain(domain):
        raise CommandError(f"{domain} is not in [domains] local of {settings.path}")
    path = _dkim_key_path(settings, args)
    key = dkimkeys.generate(args.type)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        dkimkeys.write_key(key, path)
    except FileExistsError:
        raise CommandError(f"{path} exists already: pick another selector (or --key PATH)")
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}")
    size = f" {key.key_size}" if args.type == "rsa" else ""
    stdout.write(f"wrote {path} ({args.type}{size} bits, mode 0600)\n"
                 f"publish this TXT record, then run: mailsrv dkim check {domain} "
                 f"{args.selector}\n{dkimkeys.zone_line(domain, args.selector, key)}\n")


def dkim_check(settings, args, stdin, stdout):
    """`dkim check`: the published record against the key, through [dns] servers."""
    import dns.exception
    import dns.resolver

    from mailsrv.dns import dnspython_resolver

    path = _dkim_key_path(settings, args)
    try:
        key = dkimkeys.read_key(path)
    except (dkimkeys.DKIMKeyError, OSError) as e:
        raise CommandError(str(e) if isinstance(e, dkimkeys.DKIMKeyError)
                           else f"{path}: {e.strerror}")
    name = dkimkeys.record_name(args.domain, args.selector)
    resolver = dnspython_resolver(settings.dns.servers, settings.dns.timeout)
    try:
        answer = resolver.resolve(name, "TXT", search=False)
        texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        texts = []
    except dns.exception.DNSException as e:
        raise CommandError(f"{name}: no answer from DNS ({e}); try again later")
    ok, why = dkimkeys.compare(key, texts)
    stdout.write(f"{name}: {'ok' if ok else 'MISMATCH'}: {why}\n")
    if not ok:
        stdout.write(f"publish: {dkimkeys.zone_line(args.domain, args.selector, key)}\n")
        raise CommandError(f"{name} does not hold the key in {path}")


def log_trace(settings, args, stdin, stdout):
    """`log trace`: mailsrv/logs.py's trace over the log files, oldest first."""
    if args.files:
        paths = args.files
    elif settings.log.file is not None:
        paths = files_of(settings.log.file)
    else:
        raise CommandError("[log] file is not set, so the log is where twistd writes it: "
                           "name it (twistd.log), or pipe it in: journalctl -u mailsrv -o cat "
                           f"| mailsrv log trace {args.queue_id} -")
    found = 0
    for line in trace(_lines(paths, stdin), args.queue_id):
        stdout.write(line if line.endswith("\n") else line + "\n")
        found += 1
    if not found:
        raise CommandError(f"no line names {args.queue_id}")


def _lines(paths, stdin):
    for path in paths:
        if str(path) == "-":
            yield from stdin
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from f
        except OSError as e:
            raise CommandError(f"{path}: {e.strerror}")


def reload_config(settings, args, stdin, stdout):
    """
    `reload`: the running server reads its config again (mailsrv/reload.py);
    with [server] workers, each worker does.
    """
    answers = [_control(node, "reload") for node in settings.nodes_here()]
    changed = sorted({key for answer in answers for key in answer["changed"]})
    restart = sorted({key for answer in answers for key in answer["restart"]})
    stdout.write(f"reloaded: {', '.join(changed) if changed else 'no change'}\n")
    if restart:
        stdout.write(f"needs a restart: {', '.join(restart)}\n")


def auth_locked(settings, args, stdin, stdout):
    locked = _control_any(settings, "locked")["locked"]
    for key, left in locked:
        stdout.write(f"{key}  locked for {_age(left)} more\n")
    stdout.write(f"{len(locked)} locked out\n")


def auth_unlock(settings, args, stdin, stdout):
    unlocked = _control_any(settings, f"unlock {args.target}")["unlocked"]
    if not unlocked:
        raise CommandError(f"nothing locked out matches {args.target!r} (see: auth locked)")
    stdout.write(f"unlocked: {', '.join(unlocked)}\n")


def _control_any(settings, command):
    """
    The answer of the first node here that answers: with [server] workers,
    lockouts live in Redis, shared by all of them.
    """
    nodes = settings.nodes_here()
    for node in nodes[:-1]:
        try:
            return _control(node, command)
        except CommandError:
            continue
    return _control(nodes[-1], command)


def _control(settings, command):
    """The running server's answer to C{command} on its control socket (mailsrv/control.py)."""
    try:
        return ask(settings.node_dir / SOCKET_NAME, command)
    except ServerAway as e:
        raise CommandError(f"{e}: is mailsrv running with {settings.path}?")
    except ControlError as e:
        raise CommandError(str(e))


REQUEST_WAIT = 5  # seconds for the running server to take a request


def _request(settings, stdout, action, queue_id=""):
    """
    Ask the running server's queue runner to act, which alone writes
    envelopes while it runs (docs/queue.md), and wait a little for it;
    with [server] workers, the runner of the worker that holds C{queue_id},
    or for a flush, every worker's.
    """
    if queue_id:
        spool = _spool_holding(settings, queue_id)
        if spool is None:
            raise CommandError(f"no queued message {queue_id}")
        spools = [spool]
    else:
        spools = _spools(settings)
    paths = [spool.request(action, queue_id) for spool in spools]
    deadline = time.monotonic() + REQUEST_WAIT
    while any(path.exists() for path in paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    what = f"{action} {queue_id}".strip()
    if any(path.exists() for path in paths):
        stdout.write(f"{what}: requested; no running server took it within "
                     f"{REQUEST_WAIT} s, the server does it when it starts\n")
    else:
        stdout.write(f"{what}: done\n")


def queue_flush(settings, args, stdin, stdout):
    _request(settings, stdout, "flush")


def queue_remove(settings, args, stdin, stdout):
    _request(settings, stdout, "remove", args.id)


def queue_hold(settings, args, stdin, stdout):
    _request(settings, stdout, "hold", args.id)


def queue_release(settings, args, stdin, stdout):
    _request(settings, stdout, "release", args.id)


HANDLERS = {
    ("check-config", None): check_config,
    ("reload", None): reload_config,
    ("user", "add"): user_add,
    ("user", "passwd"): user_passwd,
    ("user", "del"): user_del,
    ("user", "list"): user_list,
    ("import", "users"): import_users,
    ("queue", "list"): queue_list,
    ("queue", "flush"): queue_flush,
    ("queue", "remove"): queue_remove,
    ("queue", "hold"): queue_hold,
    ("queue", "release"): queue_release,
    ("queue", "show"): queue_show,
    ("log", "trace"): log_trace,
    ("dkim", "keygen"): dkim_keygen,
    ("dkim", "check"): dkim_check,
    ("auth", "locked"): auth_locked,
    ("auth", "unlock"): auth_unlock,
    ("lists", "check"): lists_check,
    ("filter", "merge"): filter_merge,
    ("filter", "train"): filter_train,
    ("filter", "seed-urls"): filter_seed_urls,
    ("explain", None): explain_message,
    ("import", "maildir"): import_mailbox,
    ("import", "mbox"): import_mailbox,
}

if __name__ == "__main__":
    sys.exit(main())
