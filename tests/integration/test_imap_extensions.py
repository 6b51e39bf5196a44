"""
The real server's IMAP extensions through imaplib: every capability the
server advertises is exercised (a new one without a check here fails the
test); several sessions on one mailbox, POP3 beside IMAP, keywords across a
restart.
"""

import re
import subprocess

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess, require_tool

ALICE = "alice@example.test"
MESSAGE = b"From: bob@example.test\r\nSubject: hello\r\n\r\nbody\r\n"


def raw(imap, command):
    """Send C{command} (bytes, may hold literals) under a fresh tag; the reply lines."""
    tag = imap._new_tag()
    imap.send(tag + b" " + command + b"\r\n")
    lines = []
    while True:
        line = imap.readline()
        lines.append(line)
        if line.startswith(tag + b" ") or not line:
            return lines


class ExtensionTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)

    def imap(self, select="INBOX"):
        imap = self.server.imap()
        self.addCleanup(lambda: imap.state == "LOGOUT" or imap.shutdown())
        imap.login(ALICE, PASSWORD)
        if select:
            self.assertEqual(imap.select(select)[0], "OK")
        return imap

    def append(self, imap, count=1, folder="INBOX", flags=None):
        uids = []
        for _ in range(count):
            typ, data = imap.append(folder, flags, None, MESSAGE)
            self.assertEqual(typ, "OK")
            uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
        return uids

    def test_every_advertised_extension_works(self):
        imap = self.imap(select=None)
        typ, data = imap.capability()
        advertised = data[0].split()[1:]
        for name in advertised:
            if name.startswith(b"AUTH=") or name in (b"SASL-IR", b"STARTTLS"):
                continue
            name = re.sub(rb"=\d+$", b"", name)  # APPENDLIMIT=n
            check = getattr(self, "check_" + name.decode().replace("+", "_PLUS")
                            .replace("-", "_").replace("=", "_"), None)
            self.assertIsNotNone(check, f"{name!r} is advertised but not tested")
            session = self.imap(select=None)
            check(session)
            session.logout()  # the server allows so many connections per IP

    def check_IMAP4rev1(self, imap):
        self.assertEqual(imap.select("INBOX")[0], "OK")

    def check_IDLE(self, imap):
        imap.select("INBOX")
        tag = imap._new_tag()
        imap.send(tag + b" IDLE\r\n")
        self.assertTrue(imap.readline().startswith(b"+ "))
        self.append(self.imap(select=None))
        self.assertRegex(imap.readline(), rb"^\* \d+ EXISTS\r\n$")
        self.assertRegex(imap.readline(), rb"^\* \d+ RECENT\r\n$")
        imap.send(b"DONE\r\n")
        self.assertEqual(imap.readline(), tag + b" OK IDLE terminated\r\n")

    def check_NAMESPACE(self, imap):
        typ, data = imap.namespace()
        self.assertEqual((typ, data), ("OK", [b'(("" "/")) NIL NIL']))

    def check_ID(self, imap):
        lines = raw(imap, b'ID ("name" "imaplib")')
        self.assertEqual(lines[0], b'* ID ("name" "mailsrv" "version" "0.1.0")\r\n')
        self.assertIn(b" OK ", lines[-1])

    def check_ENABLE(self, imap):
        self.assertEqual(imap.enable("CONDSTORE")[0], "OK")
        self.assertEqual(imap.response("ENABLED")[1], [b"CONDSTORE"])

    def check_LITERAL_PLUS(self, imap):
        lines = raw(imap, b"APPEND Drafts {%d+}\r\n" % len(MESSAGE) + MESSAGE)
        self.assertRegex(lines[-1], rb" OK \[APPENDUID \d+ 1\] APPEND completed")
        self.assertEqual(len(lines), 1)  # no continuation request

    def check_UIDPLUS(self, imap):
        imap.select("INBOX")
        uids = self.append(imap, 3)
        self.assertEqual(imap.uid("COPY", f"{uids[0]}:{uids[1]}", "Trash")[0], "OK")
        self.assertRegex(imap.response("COPYUID")[1][-1],
                         rb"^\d+ %d:%d \d+:\d+$" % (uids[0], uids[1]))
        imap.uid("STORE", f"{uids[0]}:{uids[2]}", "+FLAGS.SILENT", r"(\Deleted)")
        typ, data = imap.uid("EXPUNGE", str(uids[2]))
        self.assertEqual(typ, "OK")
        typ, data = imap.uid("SEARCH", None, "ALL")
        self.assertNotIn(str(uids[2]).encode(), data[0].split())
        self.assertIn(str(uids[0]).encode(), data[0].split())

    def check_MOVE(self, imap):
        imap.select("INBOX")
        uid = self.append(imap, 1, flags=r"(\Flagged $Later)")[0]
        typ, data = imap.uid("MOVE", str(uid), "Junk")
        self.assertEqual(typ, "OK")
        self.assertRegex(imap.response("COPYUID")[1][-1], rb"^\d+ %d \d+$" % uid)
        imap.select("Junk")
        typ, data = imap.fetch("1:*", "(FLAGS)")
        self.assertIn(b"$Later", data[-1])
        self.assertIn(b"\\Flagged", data[-1])

    def check_SPECIAL_USE(self, imap):
        typ, data = imap.list()
        attributes = {line.rsplit(b" ", 1)[1].strip(b'"'): line.split(b")")[0] + b")"
                      for line in data}
        self.assertEqual(
            {name: attributes[name] for name in (b"Drafts", b"Sent", b"Trash", b"Junk")},
            {b"Drafts": b"(\\HasNoChildren \\Drafts)", b"Sent": b"(\\HasNoChildren \\Sent)",
             b"Trash": b"(\\HasNoChildren \\Trash)", b"Junk": b"(\\HasNoChildren \\Junk)"},
        )
        lines = raw(imap, b'LIST (SPECIAL-USE) "" "*"')
        self.assertEqual(len(lines), 5)

    def check_UNSELECT(self, imap):
        imap.create("Kept")
        imap.select("Kept")
        self.append(imap, 1, "Kept")
        imap.store("1", "+FLAGS", r"(\Deleted)")
        self.assertEqual(imap.unselect()[0], "OK")
        self.assertEqual(imap.status("Kept", "(MESSAGES)")[1], [b'"Kept" (MESSAGES 1)'])

    def check_CHILDREN(self, imap):
        imap.create("Parent/Child")
        typ, data = imap.list('""', "Parent*")
        self.assertEqual(data, [b'(\\HasChildren) "/" "Parent"',
                                b'(\\HasNoChildren) "/" "Parent/Child"'])

    def check_LIST_EXTENDED(self, imap):
        imap.create("Ext/Sub")
        imap.subscribe("Ext/Sub")
        lines = raw(imap, b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Ext" RETURN (CHILDREN)')
        self.assertEqual(lines[0],
                         b'* LIST (\\HasChildren) "/" "Ext" ("CHILDINFO" ("SUBSCRIBED"))\r\n')
        self.assertIn(b" OK ", lines[-1])

    def check_LIST_STATUS(self, imap):
        imap.create("Counted")
        self.append(imap, 2, "Counted")
        lines = raw(imap, b'LIST "" "Counted" RETURN (STATUS (MESSAGES UNSEEN))')
        self.assertEqual(lines[:2], [b'* LIST (\\HasNoChildren) "/" "Counted"\r\n',
                                     b'* STATUS "Counted" (MESSAGES 2 UNSEEN 2)\r\n'])

    def check_STATUS_SIZE(self, imap):
        imap.create("Sized")
        self.append(imap, 2, "Sized")
        self.assertEqual(imap.status("Sized", "(SIZE)")[1],
                         [b'"Sized" (SIZE %d)' % (2 * len(MESSAGE))])

    def check_APPENDLIMIT(self, imap):
        self.assertEqual(imap.status("INBOX", "(APPENDLIMIT)")[1],
                         [b'"INBOX" (APPENDLIMIT 36700160)'])

    def check_CONDSTORE(self, imap):
        imap.enable("CONDSTORE")
        imap.select("Sent")
        highest = int(imap.response("HIGHESTMODSEQ")[1][0])
        uids = self.append(imap, 2, "Sent")
        imap.uid("STORE", str(uids[0]), "+FLAGS.SILENT", r"(\Seen)")
        typ, data = imap.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {highest + 2})")
        self.assertEqual(len(data), 1)
        # appended while selected here: \\Recent in this session
        self.assertRegex(data[0], rb"FLAGS \(\\Recent \\Seen\) MODSEQ \(\d+\) UID %d" % uids[0])
        typ, data = imap.uid("STORE", str(uids[1]), f"(UNCHANGEDSINCE {highest})",
                             "+FLAGS", r"(\Flagged)")
        self.assertEqual(typ, "OK")
        self.assertRegex(imap.response("MODIFIED")[1][0], rb"^%d$" % uids[1])

    def check_QRESYNC(self, imap):
        self.assertEqual(raw(imap, b"ENABLE QRESYNC")[0], b"* ENABLED QRESYNC\r\n")
        lines = raw(imap, b"SELECT Junk (CONDSTORE)")
        uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines)).group(1))
        highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(lines)).group(1))
        uids = self.append(imap, 3, "Junk")
        raw(imap, b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uids[1])
        self.assertEqual(raw(imap, b"UID EXPUNGE %d" % uids[1])[0],
                         b"* VANISHED %d\r\n" % uids[1])
        lines = raw(imap, b"SELECT Junk (QRESYNC (%d %d))" % (uidvalidity, highest))
        self.assertEqual(lines[0], b"* OK [CLOSED] Previous mailbox closed\r\n")
        self.assertIn(b"* VANISHED (EARLIER) %d\r\n" % uids[1], lines)
        self.assertEqual(sum(b" FETCH (UID " in line for line in lines), 2)

    def test_qresync_after_a_restart_and_a_pop3_deletion(self):
        """
        The expunges a phone missed (IMAP, POP3, while the server was
        down), from the index of a restarted server, over a raw socket.
        """
        imap = self.imap()
        uids = self.append(imap, 6)
        lines = raw(imap, b"SELECT INBOX (CONDSTORE)")
        uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines)).group(1))
        seen = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(lines)).group(1))
        imap.uid("STORE", f"{uids[0]},{uids[1]}", "+FLAGS.SILENT", r"(\Deleted)")
        imap.expunge()
        imap.uid("STORE", str(uids[4]), "+FLAGS.SILENT", "($Phone)")
        imap.logout()
        pop = self.server.pop3()
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        pop.dele(2)  # the fourth message
        pop.quit()
        self.server.stop()
        self.server.start()
        imap = self.imap(select=None)
        raw(imap, b"ENABLE QRESYNC")
        lines = raw(imap, b"SELECT INBOX (QRESYNC (%d %d %d:%d))"
                    % (uidvalidity, seen, uids[0], uids[-1]))
        self.assertIn(b"* VANISHED (EARLIER) %d:%d,%d\r\n" % (uids[0], uids[1], uids[3]),
                      lines)
        self.assertEqual([line for line in lines if b"FETCH" in line],
                         [b"* 2 FETCH (UID %d FLAGS ($Phone) MODSEQ (%d))\r\n"
                          % (uids[4], seen + 4)])

    def check_MULTIAPPEND(self, imap):
        imap.create("Multi")
        lines = raw(imap, b"APPEND Multi (\\Seen) {%d+}\r\n%b {%d+}\r\n%b"
                    % (len(MESSAGE), MESSAGE, len(MESSAGE), MESSAGE))
        self.assertRegex(lines[-1], rb" OK \[APPENDUID \d+ 1:2\] APPEND completed")
        imap.select("Multi")
        typ, data = imap.fetch("1:*", "(FLAGS)")
        self.assertEqual(data, [b"1 (FLAGS (\\Recent \\Seen))", b"2 (FLAGS (\\Recent))"])

    def check_BINARY(self, imap):
        message = (b"Content-Type: application/octet-stream\r\n"
                   b"Content-Transfer-Encoding: binary\r\n\r\n\x00\xff\n")
        imap.create("Binary")
        lines = raw(imap, b"APPEND Binary ~{%d+}\r\n%b" % (len(message), message))
        self.assertRegex(lines[-1], rb" OK \[APPENDUID \d+ 1\] APPEND completed")
        imap.select("Binary")
        lines = raw(imap, b"FETCH 1 (BODY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1])")
        self.assertEqual(b"".join(lines[:-1]),
                         b"* 1 FETCH (BODY[1] {6}\r\nAP8K\r\n BINARY.SIZE[1] 3 "
                         b"BINARY[1] ~{3}\r\n\x00\xff\n)\r\n")

    def check_CATENATE(self, imap):
        uid = self.append(imap, 1, "Junk")[0]
        lines = raw(imap, b'APPEND Junk CATENATE (URL "/Junk/;UID=%d/;SECTION=HEADER" '
                    b"TEXT {5+}\r\nnew\r\n)" % uid)
        self.assertRegex(lines[-1], rb" OK \[APPENDUID \d+ %d\] APPEND completed" % (uid + 1))
        imap.select("Junk")
        typ, data = imap.uid("FETCH", str(uid + 1), "(BODY.PEEK[])")
        self.assertEqual(data[0][1], MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\nnew\r\n")
        lines = raw(imap, b'APPEND Junk CATENATE (URL "/Junk/;UID=999")')
        self.assertIn(b" NO [BADURL /Junk/;UID=999] ", lines[-1])

    def sorting_folder(self, imap):
        """Three messages in a new folder, selected: subjects c, Re: a, b; a thread of two."""
        self.folders = getattr(self, "folders", 0) + 1
        name = f"Sorting{self.folders}"
        imap.create(name)
        for subject, extra in ((b"c", b"Message-ID: <1@x>\r\n"),
                               (b"Re: a", b"References: <1@x>\r\n"), (b"b", b"")):
            data = (b"From: Zed <z@example.test>\r\nTo: " + subject[-1:] + b"@example.test\r\n"
                    b"Subject: " + subject + b"\r\n" + extra + b"\r\nbody\r\n")
            self.assertEqual(imap.append(name, None, None, data)[0], "OK")
        imap.select(name)

    def check_ESEARCH(self, imap):
        self.sorting_folder(imap)
        lines = raw(imap, b"UID SEARCH RETURN (MIN MAX COUNT ALL) ALL")
        self.assertRegex(lines[0], rb'^\* ESEARCH \(TAG "\w+"\) UID MIN 1 MAX 3 ALL 1:3 COUNT 3')

    def check_SEARCHRES(self, imap):
        self.sorting_folder(imap)
        self.assertIn(b" OK ", raw(imap, b"SEARCH RETURN (SAVE) SUBJECT b")[-1])
        typ, data = imap.uid("FETCH", "$", "(UID)")
        self.assertEqual(data, [b"3 (UID 3)"])

    def check_SORT(self, imap):
        self.sorting_folder(imap)
        self.assertEqual(imap.sort("(SUBJECT)", "UTF-8", "ALL"), ("OK", [b"2 3 1"]))
        self.assertEqual(imap.uid("SORT", "(REVERSE TO)", "UTF-8", "ALL"), ("OK", [b"1 3 2"]))

    def check_SORT_DISPLAY(self, imap):
        self.sorting_folder(imap)
        self.assertEqual(imap.sort("(DISPLAYTO)", "UTF-8", "ALL"), ("OK", [b"2 3 1"]))

    def check_ESORT(self, imap):
        self.sorting_folder(imap)
        lines = raw(imap, b"SORT RETURN (MIN ALL) (SUBJECT) UTF-8 ALL")
        self.assertRegex(lines[0], rb'^\* ESEARCH \(TAG "\w+"\) MIN 2 ALL 2:3,1\r\n')

    def check_THREAD_REFERENCES(self, imap):
        self.sorting_folder(imap)
        self.assertEqual(imap.thread("REFERENCES", "UTF-8", "ALL"), ("OK", [b"(1 2)(3)"]))

    def check_THREAD_ORDEREDSUBJECT(self, imap):
        self.sorting_folder(imap)
        self.assertEqual(imap.thread("ORDEREDSUBJECT", "UTF-8", "ALL"), ("OK", [b"(1)(2)(3)"]))

    def test_curl_sort_and_thread(self):
        """A real client's raw commands (curl -X), as the brief of issue 15 asks."""
        require_tool(self, "curl")
        self.sorting_folder(self.imap(select=None))
        url = f"imap://127.0.0.1:{self.server.ports['imap']}/Sorting1"
        for command, reply in (("UID SORT (SUBJECT) UTF-8 ALL", "* SORT 2 3 1"),
                               ("UID SORT (REVERSE SUBJECT) UTF-8 ALL", "* SORT 1 3 2"),
                               ("THREAD REFERENCES UTF-8 ALL", "* THREAD (1 2)(3)")):
            result = subprocess.run(["curl", "-s", "-u", f"{ALICE}:{PASSWORD}", url,
                                     "-X", command], capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(reply + "\n", result.stdout)

    def test_two_sessions_see_each_other(self):
        a, b = self.imap(), self.imap()
        self.append(a, 2)
        b.noop()
        self.assertEqual(b.response("EXISTS")[1][-1], b"2")
        a.store("1", "+FLAGS", r"(\Seen $Label1)")
        b.noop()
        self.assertIn(b"1 (FLAGS ($Label1 \\Seen))", b.response("FETCH")[1])
        a.store("2", "+FLAGS", r"(\Deleted)")
        a.expunge()
        b.noop()
        self.assertEqual(b.response("EXPUNGE")[1], [b"2"])
        # UIDs are never reused, after expunge or restart
        self.assertEqual(self.append(a, 1), [3])

    def test_pop3_and_imap_together(self):
        imap = self.imap()
        self.append(imap, 2)
        pop = self.server.pop3()
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        self.assertEqual(pop.stat(), (2, 2 * len(MESSAGE)))
        pop.dele(1)
        imap.store("2", "+FLAGS", r"(\Flagged)")
        self.assertEqual(pop.retr(2)[1][-1], b"body")
        pop.quit()
        imap.noop()
        self.assertEqual(imap.response("EXPUNGE")[1], [b"1"])
        typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
        # this session was the first to see it: \\Recent (RFC 3501)
        self.assertEqual(data, [b"1 (FLAGS (\\Flagged \\Recent) UID 2)"])

    def test_keywords_survive_a_restart(self):
        imap = self.imap()
        self.append(imap, 1, flags="($Important Project-X)")
        imap.logout()
        self.server.stop()
        self.server.start()
        imap = self.imap()
        typ, data = imap.fetch("1", "(FLAGS)")
        self.assertEqual(data, [b"1 (FLAGS ($Important Project-X))"])
        self.assertIn(b"$Important Project-X", imap.response("FLAGS")[1][0])
