"""
A real OpenLDAP slapd of our own (Debian's package), for the [auth]
source = "ldap" tests: a slapd.conf, an mdb database loaded with
slapadd, and a TLS certificate for "localhost" from a CA of the tests,
all in a temporary folder; ldap:// and ldaps:// on free loopback ports;
started in the foreground (stopped by its PID), never the system's slapd.
"""

import socket
import subprocess
import textwrap
from pathlib import Path

from tests import certs
from tests.daemon import Daemon
from tests.integration.harness import free_port

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA = Path("/etc/ldap/schema")
BASE = "ou=people,dc=example,dc=test"
ADMIN_DN = "cn=admin,dc=example,dc=test"
ADMIN_PASSWORD = "admin secret"
SEARCH_DN = "cn=mailsrv,dc=example,dc=test"
SEARCH_PASSWORD = "search secret"


def slapd_missing():
    """Why no slapd can run here, or L{None}."""
    for path in (SLAPD, SLAPADD, SCHEMA / "inetorgperson.schema"):
        if not Path(path).exists():
            return f"{path} is missing (Debian: apt-get install slapd; .ci/run installs it)"
    return None


def person(uid, password, mail, *aliases):
    """The LDIF of one inetOrgPerson with a password, an address and its aliases."""
    lines = [f"dn: uid={uid},{BASE}", "objectClass: inetOrgPerson",
             "objectClass: inetLocalMailRecipient", f"uid: {uid}", f"cn: {uid}",
             f"sn: {uid}", f"userPassword: {password}", f"mail: {mail}"]
    lines += [f"mailLocalAddress: {alias}" for alias in aliases]
    return "\n".join(lines) + "\n"


class SlapdServer(Daemon):
    """
    One slapd. C{people} are LDIF entries (L{person}) under L{BASE}; the
    searching account L{SEARCH_DN} may read everything but passwords, and
    anonymous clients may only bind.

    @ivar url: C{ldap://127.0.0.1:PORT}.
    @ivar tls_url: C{ldaps://localhost:PORT} (its certificate names localhost).
    @ivar ca: the PEM file of the CA that signed it.
    """

    name = "slapd"

    def __init__(self, people):
        super().__init__()
        self.port, self.tls_port = free_port(), free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.tls_url = f"ldaps://localhost:{self.tls_port}"
        authority = certs.make("mailsrv test LDAP CA", ca=True)
        self.ca, _ = authority.write(self.dir, "ca")
        cert, key = certs.make("localhost", issuer=authority, names=("localhost",)).write(
            self.dir, "slapd")
        (self.dir / "db").mkdir()
        self.config = self.dir / "slapd.conf"
        self.config.write_text(textwrap.dedent(f"""\
            include {SCHEMA}/core.schema
            include {SCHEMA}/cosine.schema
            include {SCHEMA}/inetorgperson.schema
            include {SCHEMA}/nis.schema
            include {SCHEMA}/misc.schema
            modulepath /usr/lib/ldap
            moduleload back_mdb
            pidfile {self.dir}/slapd.pid
            TLSCACertificateFile {self.ca}
            TLSCertificateFile {cert}
            TLSCertificateKeyFile {key}
            database mdb
            maxsize 16777216
            suffix "dc=example,dc=test"
            rootdn "{ADMIN_DN}"
            rootpw "{ADMIN_PASSWORD}"
            directory {self.dir}/db
            access to attrs=userPassword
                by anonymous auth
                by * none
            access to *
                by dn.exact="{SEARCH_DN}" read
                by users read
                by * none
            """))
        data = textwrap.dedent(f"""\
            dn: dc=example,dc=test
            objectClass: dcObject
            objectClass: organization
            o: example
            dc: example

            dn: {SEARCH_DN}
            objectClass: organizationalRole
            objectClass: simpleSecurityObject
            cn: mailsrv
            userPassword: {SEARCH_PASSWORD}

            dn: {BASE}
            objectClass: organizationalUnit
            ou: people

            """) + "\n".join(people)
        (self.dir / "data.ldif").write_text(data)
        subprocess.run([SLAPADD, "-f", str(self.config), "-l", str(self.dir / "data.ldif")],
                       check=True, capture_output=True, timeout=60)

    def argv(self):
        return [SLAPD, "-d", "0", "-f", str(self.config), "-h",
                f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tls_port}/"]

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
        except OSError:
            return False

    def pause(self):
        """SIGSTOP: the server accepts connections but answers nothing (a slow directory)."""
        self.process.send_signal(19)

    def resume(self):
        self.process.send_signal(18)
