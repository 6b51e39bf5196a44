"""
The pure parts of the benchmark harness (bench/): percentiles, the results
table, the Maildir builder. No server, no network.
"""

import os
import tempfile

from twisted.trial import unittest

from bench import harness
from bench.maildir import (NEEDLE_EVERY, build_maildir, first_message, maildir_count,
                           message_bytes)
from bench.stats import Row, format_table, percentile, ratios
from bench.systems import SYSTEMS, Skip


class PercentileTests(unittest.TestCase):
    def test_linear_interpolation(self):
        self.assertEqual(percentile([1, 2, 3, 4], 50), 2.5)
        self.assertEqual(percentile([4, 1, 3, 2], 50), 2.5)  # order does not matter
        self.assertAlmostEqual(percentile(range(1, 101), 99), 99.01)

    def test_ends(self):
        values = [5, 1, 9]
        self.assertEqual(percentile(values, 0), 1)
        self.assertEqual(percentile(values, 100), 9)

    def test_one_value_and_none(self):
        self.assertEqual(percentile([7], 99), 7)
        self.assertIsNone(percentile([], 50))

    def test_out_of_range(self):
        self.assertRaises(ValueError, percentile, [1], 101)
        self.assertRaises(ValueError, percentile, [1], -1)


class TableTests(unittest.TestCase):
    def rows(self):
        return [
            Row("mailsrv", "SMTP", count=100, rate=500.0, latencies=[0.010, 0.020, 0.030],
                rss=60 << 20, durable="fsync'd"),
            Row("postfix", "SMTP", count=100, rate=250.0, latencies=[0.040], rss=45 << 20,
                durable="queue fsync'd", errors=2),
            Row("twistd-mail", "SMTP", skipped="cannot deliver on Python 3"),
            Row("dovecot", "IMAP", count=3, rate=10.0, unit="ops/s"),
        ]

    def test_ratio_to_the_same_workload_of_mailsrv(self):
        rows = self.rows()
        ratio = ratios(rows)
        self.assertEqual(ratio[id(rows[0])], 1.0)
        self.assertEqual(ratio[id(rows[1])], 0.5)
        self.assertIsNone(ratio[id(rows[2])])  # skipped
        self.assertIsNone(ratio[id(rows[3])])  # no mailsrv row for IMAP

    def test_text_table(self):
        lines = format_table(self.rows()).splitlines()
        self.assertEqual(len(lines), 6)  # header, rule, four rows
        self.assertTrue(lines[0].startswith("workload"))
        self.assertIn("p50 ms", lines[0])
        self.assertEqual(set(lines[1].replace(" ", "")), {"-"})
        mailsrv, postfix, skipped, dovecot = lines[2:]
        self.assertIn("500 msg/s", mailsrv)
        self.assertIn("20.00", mailsrv)  # p50 of 10, 20, 30 ms
        self.assertIn("1.00", mailsrv)
        self.assertIn("0.50", postfix)
        self.assertIn("2 errors", postfix)
        self.assertIn("45", postfix)  # MB
        self.assertIn("skipped", skipped)
        self.assertIn("cannot deliver on Python 3", skipped)
        self.assertIn("10.0 ops/s", dovecot)
        # the columns line up
        column = lines[0].index("system")
        self.assertEqual(mailsrv[column:column + 7], "mailsrv")

    def test_markdown_table(self):
        lines = format_table(self.rows(), markdown=True).splitlines()
        self.assertTrue(lines[0].startswith("| workload | system |"))
        self.assertEqual(lines[1].count("---"), lines[0].count("|") - 1)
        self.assertEqual(len(lines), 6)
        for line in lines:
            self.assertEqual(line.count("|"), lines[0].count("|"))


class MaildirBuilderTests(unittest.TestCase):
    def test_build(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        path = os.path.join(root, "alice")
        names = build_maildir(path, 250, size=4096)
        self.assertEqual(sorted(os.listdir(path)), ["cur", "new", "tmp"])
        self.assertEqual(len(names), 250)
        self.assertEqual(sorted(os.listdir(os.path.join(path, "cur"))), sorted(names))
        self.assertEqual(maildir_count(path), 250)
        for name in names[:20]:
            data = open(os.path.join(path, "cur", name), "rb").read()
            size = int(name.split(",S=")[1].split(":")[0])
            self.assertEqual(size, len(data))  # the ,S= size is exact
            self.assertLessEqual(abs(len(data) - 4096), 80)
            self.assertNotIn(b"\n", data.replace(b"\r\n", b""))  # CRLF only
            self.assertIn(":2,", name)
        self.assertTrue(names[0].endswith(":2,S"))  # every third one is seen
        self.assertTrue(names[1].endswith(":2,"))
        self.assertEqual(len(set(names)), 250)

    def test_needles(self):
        self.assertIn(b"Subject: bench message 0 needle\r\n", message_bytes(0))
        self.assertNotIn(b"needle", message_bytes(1))
        self.assertIn(b"needle", message_bytes(NEEDLE_EVERY))

    def test_count_of_missing_maildir(self):
        self.assertEqual(maildir_count("/nonexistent/maildir"), 0)


class OptionsTests(unittest.TestCase):
    def test_mailsrv_is_always_the_baseline(self):
        args = harness.parse_args(["--systems", "postfix", "--workloads", "smtp,imap"])
        self.assertEqual(args.systems, ["mailsrv", "postfix"])
        self.assertEqual(args.workloads, ["smtp", "imap"])

    def test_message_size(self):
        data = harness.message(4096)
        self.assertLessEqual(abs(len(data) - 4096), 80)
        self.assertTrue(data.endswith(b"\r\n"))
        self.assertFalse(any(line.startswith(b".") for line in data.split(b"\r\n")))


class RspamdPeerTests(unittest.TestCase):
    """The postfix-rspamd peer's proof that rspamd scanned the mail."""

    def peer(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        return SYSTEMS["postfix-rspamd"](root, ["alice"], install=False)

    def test_scanned_message_passes(self):
        self.peer().check_delivered(
            b"Return-Path: <a@b>\r\nX-Spamd-Result: default: False [0.90 / 15.00];\r\n"
            b"\tMIME_GOOD(-0.10)[text/plain];\r\nSubject: x\r\n\r\nbody\r\n")

    def test_unscanned_message_is_a_skip(self):
        peer = self.peer()
        self.assertRaises(Skip, peer.check_delivered, b"Subject: x\r\n\r\nbody\r\n")
        # the header's name in the body proves nothing
        self.assertRaises(Skip, peer.check_delivered,
                          b"Subject: x\r\n\r\nX-Spamd-Result: forged\r\n")

    def test_other_systems_check_nothing(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        SYSTEMS["postfix"](root, ["alice"]).check_delivered(b"")

    def test_mailsrv_with_rspamd_needs_its_verdict(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        mailsrv = SYSTEMS["mailsrv"](root, ["alice"], install=False, options={"rspamd": True})
        mailsrv.check_delivered(
            b"X-Mailsrv-Spam: no;\r\n\treasons=rspamd no_action 0.90/15 MIME_GOOD(-0.1)\r\n"
            b"Subject: x\r\n\r\nbody\r\n")
        for unscanned in (b"Subject: x\r\n\r\nX-Mailsrv-Spam: no; reasons=rspamd\r\n",
                          b"X-Mailsrv-Spam: no; reasons=rspamd unscanned\r\n\r\nbody\r\n"):
            self.assertRaises(Skip, mailsrv.check_delivered, unscanned)
        SYSTEMS["mailsrv"](root, ["alice"]).check_delivered(b"Subject: x\r\n\r\nbody\r\n")

    def test_mailsrv_rspamd_option(self):
        args = harness.parse_args(["--systems", "postfix-rspamd", "--mailsrv-rspamd"])
        bench = harness.Bench(args, harness.QUICK, tempfile.gettempdir())
        self.assertEqual(bench.options(SYSTEMS["mailsrv"], "smtp"), {"rspamd": True})
        args = harness.parse_args(["--systems", "postfix-clamav", "--mailsrv-clamav"])
        bench = harness.Bench(args, harness.QUICK, tempfile.gettempdir())
        self.assertEqual(bench.options(SYSTEMS["mailsrv"], "smtp"), {"clamav": True})
        self.assertEqual(bench.options(SYSTEMS["postfix-rspamd"], "smtp"), {})

    def test_clamav_peer_needs_the_milters_header(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        peer = SYSTEMS["postfix-clamav"](root, ["alice"], install=False)
        peer.check_delivered(b"X-Virus-Scanned: clamav-milter 1.4.6 at postfix.bench.test\r\n"
                             b"X-Virus-Status: Clean\r\n\r\nbody\r\n")
        self.assertRaises(Skip, peer.check_delivered,
                          b"Subject: x\r\n\r\nX-Virus-Scanned: forged\r\n")

    def test_mailsrv_with_clamav_must_not_say_unscanned(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        mailsrv = SYSTEMS["mailsrv"](root, ["alice"], install=False, options={"clamav": True})
        mailsrv.check_delivered(b"Subject: x\r\n\r\nbody\r\n")
        self.assertRaises(Skip, mailsrv.check_delivered,
                          b"X-Mailsrv-Spam: no; reasons=clamav unscanned\r\n\r\nbody\r\n")

    def test_first_message_of_a_maildir(self):
        root = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(root))
        self.assertEqual(first_message(os.path.join(root, "missing")), b"")
        first = sorted(build_maildir(root, 2))[0]
        with open(os.path.join(root, "cur", first), "rb") as f:
            self.assertEqual(first_message(root), f.read())

