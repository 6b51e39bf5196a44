"""Tests of mailsrv.smtp: run them all with `trial tests.test_smtp`."""
