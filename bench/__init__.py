"""
Reproducible benchmarks: `python -m bench` (or bench/run) compares mailsrv
with Postfix, Dovecot, aiosmtpd and Twisted's own mail server on loopback;
bench/queue_speed.py and bench/dnsbl_speed.py are single-question benches.
"""
