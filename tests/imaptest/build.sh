#!/usr/bin/env bash
# Build Dovecot's imaptest (source: imaptest-924f619.tar.gz here, MIT, see COPYING.MIT)
# against Debian 12's dovecot-dev 2.3.19; newer imaptest needs Dovecot 2.4.
#   IMAPTEST_BUILD  where to build (default ${TMPDIR:-/tmp}/mailsrv-imaptest-924f619);
#                   a finished build there is reused
#   SKIP_APT=1      do not apt-get install the build dependencies
# Prints the binary's path last. It finds libdovecot by its RUNPATH, so it runs as is.
#
# dovecot-dev has no libdovecot.so: that is in dovecot-core, which would install (and may
# start) a Dovecot daemon. Without dovecot-core, its package is unpacked into the build
# folder instead of installed.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${IMAPTEST_BUILD:-${TMPDIR:-/tmp}/mailsrv-imaptest-924f619}
if [ -x "$BUILD/src/imaptest" ]; then echo "$BUILD/src/imaptest"; exit 0; fi

# libdovecot.so.0 itself needs libunwind8; dovecot-dev does not pull it in.
packages="dovecot-dev autoconf automake libtool pkg-config make gcc libssl-dev libunwind8"
if [ "${SKIP_APT:-0}" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  (apt-get install -y -qq $packages || { apt-get update -qq && apt-get install -y -qq $packages; }) \
    >/dev/null || { echo "apt-get install $packages failed"; exit 1; }
fi

rm -rf "$BUILD"; mkdir -p "$BUILD"
tar -xzf "$HERE/imaptest-924f619.tar.gz" -C "$BUILD" --strip-components=1
cd "$BUILD"

libdir=/usr/lib/dovecot
if [ ! -e "$libdir/libdovecot.so" ]; then
  libdir=$BUILD/dovecot-core/usr/lib/dovecot
  # the same version as dovecot-dev, whose headers we compile against
  version=$(dpkg-query -W -f='${Version}' dovecot-dev) || { echo "dovecot-dev is not installed"; exit 1; }
  mkdir -p deb && (cd deb && apt-get download -qq "dovecot-core=$version") >/dev/null 2>&1 ||
    { echo "apt-get download dovecot-core=$version failed"; exit 1; }
  dpkg -x deb/dovecot-core_*.deb dovecot-core
fi

echo 0.0.0-924f619 > version
# Debian's 2.3.19.1+deb12u7 takes a 4th argument in imap_parser_create().
sed -i 's/imap_parser_create(\(.*\), (size_t)-1);/imap_parser_create(\1, (size_t)-1, NULL);/' \
  src/commands.c src/test-parser.c src/imap-client.c
# imaptest dereferences a NULL last_cmd when untagged replies arrive after LOGOUT: guard it.
sed -i -e 's/^\(\s*\)client->last_cmd->state > STATE_SELECT) {/\1(client->last_cmd == NULL || client->last_cmd->state > STATE_SELECT)) {/' \
  -e 's/^\(\s*\)states\[client->last_cmd->state\].name);/\1client->last_cmd == NULL ? "none" : states[client->last_cmd->state].name);/' \
  src/imap-client.c
(./autogen.sh && ./configure --with-dovecot=/usr/lib/dovecot &&
 make -j"$(nproc)" LDFLAGS="-L$libdir -Wl,-rpath,$libdir") >build.log 2>&1 ||
  { tail -20 build.log; echo "imaptest build failed (log: $BUILD/build.log)"; exit 1; }
if ldd src/imaptest | grep 'not found'; then
  echo "imaptest is built but cannot run: a library is missing"; mv src/imaptest src/imaptest.broken; exit 1
fi
echo "$BUILD/src/imaptest"
