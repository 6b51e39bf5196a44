"""
mailsrv packaging.

package_dir={"": "."} is deliberate: with it, setuptools' editable install
(`pip install -e .`) puts the project root on sys.path with a plain .pth file
instead of an import hook, so twistd's plugin scan finds
twisted/plugins/mailsrv_plugin.py there. The regular install ships that file
into site-packages/twisted/plugins/. Neither ships twisted/__init__.py or
twisted/plugins/__init__.py, which would shadow the installed Twisted.
"""

from setuptools import find_packages, setup

setup(
    name="mailsrv",
    version="0.1.0",
    description="One-process mail server: SMTP, submission, POP3, IMAP, on Twisted",
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=find_packages(include=["mailsrv", "mailsrv.*"]) + ["twisted.plugins"],
    install_requires=[
        "Twisted[tls]>=26.10,<27",  # the range tests/test_twisted_compat.py verifies
        "pyOpenSSL>=24.0",
        "service-identity>=24.1",
        "cryptography>=42",
        "argon2-cffi>=23.1,<26",
        # Hashes imported from Dovecot/OpenLDAP (mailsrv/directory/passwords.py):
        # bcrypt for {BLF-CRYPT}; libpass, the maintained passlib fork (import
        # name passlib; never also install the passlib distribution, which
        # would write over its files), for {SHA512-CRYPT}/{SHA256-CRYPT}.
        "bcrypt>=4.1,<6",
        "libpass>=1.9,<2",
        "dnspython>=2.4,<3",
        "pyspf>=2.0.14,<3",
        "psutil>=5.9",  # this machine's addresses ([[listen]] block_own_ips, the "self" entry)
        "ldap3>=2.9,<3",  # [auth] source = "ldap" (README: why not ldaptor)
        "prometheus-client>=0.20",  # [metrics]: /metrics over twisted.web
        "dkimpy>=1.1,<2",  # DKIM (and ARC) signatures: signing, [antispam.dkim], DMARC
        "authres>=1.2",  # what dkimpy's ARC sealing reads our Authentication-Results with
        "publicsuffixlist>=1.0",  # DMARC's organisational domains, the list shipped inside
        "txredisapi>=1.5,<2",  # [sessions] backend = "redis" (README: why not redis-py)
        "PyNaCl>=1.5,<2",  # dkimpy's Ed25519 (RFC 8463): [antispam.dkim], and our tests
    ],
    # The tests' own needs (README's test command installs them): hypothesis
    # drives the property tests of every parser.
    extras_require={"test": ["hypothesis>=6.100"]},
    entry_points={"console_scripts": ["mailsrv = mailsrv.admin.cli:main"]},
)
