#!/usr/bin/env bash
# Install the Autobahn|Testsuite (wstest 0.8.2, Python 2.7 only) into a private
# cache folder, without touching the system Python or the system's apt state.
# Called by scripts/test and conformance/run-all.sh; a no-op once installed.
#
#   AUTOBAHN_HOME   install folder (default: $HOME/.cache/autobahn-testsuite)
#   AUTOBAHN_DEBIAN_MIRROR  Debian mirror URI (default: taken from /etc/apt)
#   AUTOBAHN_WSACCEL=0      skip the optional C speed-up (wsaccel, needs gcc)
#
# Result: $AUTOBAHN_HOME/bin/wstest. Safe to run again: it stops early when the
# install already works. Python 2.7 comes from Debian 11 (bullseye) packages,
# unpacked with dpkg -x; the Python packages come from pip's configured index.
set -euo pipefail

HOME_DIR="${AUTOBAHN_HOME:-$HOME/.cache/autobahn-testsuite}"
PY="$HOME_DIR/py27"          # unpacked Debian python2.7
SITE="$HOME_DIR/site"        # pip --prefix for the Python 2 packages
WSTEST="$HOME_DIR/bin/wstest"
WORK="$HOME_DIR/work"        # downloads, private apt lists

die() { echo "install.sh: ERROR: $*" >&2; exit 1; }
log() { echo "install.sh: $*" >&2; }

MARK="$HOME_DIR/.installed" MARK_VERSION=2   # bump when this script changes the install
if [ "$(cat "$MARK" 2>/dev/null)" = "$MARK_VERSION" ] && "$WSTEST" -a >/dev/null 2>&1; then
    log "already installed: $WSTEST"; exit 0
fi

for tool in apt-get dpkg; do
    command -v "$tool" >/dev/null || die "'$tool' not found (a Debian/Ubuntu machine is needed)"
done
# python3 runs run.sh/summarize.py; its pip downloads the Python 2 pip; gcc builds
# wsaccel (optional). A minimal Debian image has none of them.
WSACCEL="${AUTOBAHN_WSACCEL:-1}"
missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ "$WSACCEL" = 1 ] && ! command -v gcc >/dev/null && missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    log "apt-get install ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } </dev/null >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
command -v python3 >/dev/null || die "python3 not found after apt-get install"
mkdir -p "$WORK/debs" "$WORK/wheels" "$WORK/lists/partial" "$WORK/cache" "$HOME_DIR/bin"

# --- 1. Debian mirror URI, from the machine's own apt configuration ---------
find_mirror() {
    # deb822 files: print the URIs of stanzas that are enabled, of type deb,
    # and carry a plain release suite (no "-security"/"-updates").
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'BEGIN{RS="";FS="\n"}
             { t=""; u=""; s=""; en="yes"
               for(i=1;i<=NF;i++){ split($i,kv,":"); k=tolower(kv[1]); v=substr($i,index($i,":")+1)
                 if(k=="types")t=v; else if(k=="uris")u=v; else if(k=="suites")s=v; else if(k=="enabled")en=v }
               if(t ~ /(^| )deb( |$)/ && en !~ /no/ && s ~ /(^| )[a-z]+( |$)/){ n=split(u,a," "); for(j=1;j<=n;j++) print a[j] } }' "$f"
    done
    # one-line format: deb [options] URI suite components...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -e 's/\[[^]]*\]//' "$f" | awk '$1=="deb" && $3 ~ /^[a-z]+$/ {print $2}'
    done
}
MIRROR="${AUTOBAHN_DEBIAN_MIRROR:-$(find_mirror | grep -v -- '-security' | head -n1 || true)}"
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*}; set AUTOBAHN_DEBIAN_MIRROR=<URI of a Debian archive>"
log "Debian mirror: $MIRROR"

# --- 2. Python 2.7 from Debian 11 (bullseye), unpacked into $PY -----------
if [ ! -x "$PY/usr/bin/python2.7" ]; then
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    opt=""; [ -r "$keyring" ] && opt="[signed-by=$keyring] "
    echo "deb ${opt}${MIRROR} bullseye main" > "$WORK/bullseye.list"
    APT=(apt-get -q -o Dir::Etc::SourceList="$WORK/bullseye.list" -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists="$WORK/lists" -o Dir::Cache="$WORK/cache")
    [ "$(id -u)" = 0 ] && APT+=(-o APT::Sandbox::User=root)
    log "apt-get update (private lists, bullseye only)"
    "${APT[@]}" update >"$WORK/apt-update.log" 2>&1 \
        || die "apt-get update for bullseye failed, see $WORK/apt-update.log"
    # apt-get update exits 0 when a fetch fails, so check that the index arrived.
    ls "$WORK"/lists/*bullseye*Packages* >/dev/null 2>&1 || die "could not fetch the bullseye index from $MIRROR:
  $(grep -m1 -E '^(W|E):' "$WORK/apt-update.log")
  (is Debian 11 still on that mirror? set AUTOBAHN_DEBIAN_MIRROR to one that has it)"
    log "downloading python2.7 .debs"
    (cd "$WORK/debs" && "${APT[@]}" download python2.7 python2.7-minimal libpython2.7-minimal \
        libpython2.7-stdlib libpython2.7 libssl1.1 libffi7 python2.7-dev libpython2.7-dev) >"$WORK/apt-download.log" 2>&1 \
        || die "apt-get download failed, see $WORK/apt-download.log"
    rm -rf "$PY"; mkdir -p "$PY"
    for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$PY" || die "dpkg -x $deb failed"; done
fi
LIBDIR=$(ls -d "$PY"/usr/lib/*-linux-gnu* 2>/dev/null | head -n1)
[ -n "$LIBDIR" ] || die "no multiarch lib folder in $PY/usr/lib"
export PIP_NO_PYTHON_VERSION_WARNING=1
py2() { LD_LIBRARY_PATH="$LIBDIR" PYTHONHOME="$PY/usr" PYTHONPATH="$SITE/lib/python2.7/site-packages" \
        "$PY/usr/bin/python2.7" "$@"; }
py2 -c 'import ssl, zlib, ctypes' || die "unpacked python2.7 is broken (ssl/zlib/ctypes import failed)"

# --- 3. pip for Python 2, then the pinned suite ----------------------------
if ! py2 -m pip --version >/dev/null 2>&1; then
    log "downloading pip/setuptools/wheel for Python 2 (pip's configured index)"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$WORK/wheels" \
        pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 || die "python3 -m pip download failed"
    py2 "$WORK/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" install -q --no-warn-script-location \
        --no-index --prefix "$SITE" "$WORK"/wheels/*.whl || die "bootstrapping pip for Python 2 failed"
fi
# Full pin set (a known-good resolution for Python 2.7).
cat > "$WORK/requirements.txt" <<'EOF'
autobahntestsuite==0.8.2
autobahn[twisted]==0.10.9
Twisted==19.10.0
zope.interface==4.6.0
txaio==2.1.0
incremental==16.10.1
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
service_identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
attrs==21.4.0
Automat==22.10.0
constantly==15.1.0
hyperlink==21.0.0
idna==2.10
PyHamcrest==1.10.1
klein==17.10.0
Werkzeug==1.0.1
jinja2==2.11.3
markupsafe==1.1.1
unittest2==1.1.0
linecache2==1.0.0
traceback2==1.4.0
argparse==1.2.1
six==1.16.0
enum34==1.1.10
ipaddress==1.0.23
typing==3.10.0.0
setuptools==44.1.1
EOF
log "pip install (Python 2) of the pinned suite into $SITE"
py2 -m pip install -q --no-warn-script-location --prefix "$SITE" -r "$WORK/requirements.txt" \
    >"$WORK/pip-install.log" 2>&1 || { tail -n 20 "$WORK/pip-install.log" >&2; die "pip install failed, see $WORK/pip-install.log"; }
# wsaccel: C masking + UTF-8 validation that autobahn uses when present; it makes
# wstest several times faster on the big 9.* and 12.*/13.* cases.
if [ "$WSACCEL" = 1 ]; then
    log "building wsaccel (optional speed-up)"
    C_INCLUDE_PATH="$PY/usr/include/python2.7:$PY/usr/include" py2 -m pip install -q --no-warn-script-location \
        --prefix "$SITE" wsaccel==0.6.6 >"$WORK/pip-wsaccel.log" 2>&1 \
        || log "WARNING: wsaccel did not build (see $WORK/pip-wsaccel.log); wstest works, only slower"
fi

# --- 4. launcher ------------------------------------------------------------
# zope is a namespace package, so the site folder is added with site.addsitedir
# (PYTHONPATH alone fails). WebSocket listeners bind to 127.0.0.1 only.
cat > "$HOME_DIR/bin/wstest.py" <<EOF
import site, sys
site.addsitedir("$SITE/lib/python2.7/site-packages")
import autobahn.twisted.websocket as ws
_listen = ws.listenWS
def listen_loopback(factory, contextFactory=None, backlog=50, interface="127.0.0.1"):
    return _listen(factory, contextFactory, backlog, interface)
ws.listenWS = listen_loopback
sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run
sys.exit(run())
EOF
cat > "$WSTEST" <<EOF
#!/bin/sh
export LD_LIBRARY_PATH="$LIBDIR" PYTHONHOME="$PY/usr"
unset PYTHONPATH
exec "$PY/usr/bin/python2.7" -W ignore "$HOME_DIR/bin/wstest.py" "\$@"
EOF
chmod +x "$WSTEST"
version=$("$WSTEST" -a 2>&1) || die "$WSTEST -a failed after install: $version"
echo "$MARK_VERSION" > "$MARK"
rm -rf "$WORK/lists" "$WORK/cache" "$WORK/debs" "$WORK/wheels"   # keep only the logs
log "installed $WSTEST: $(echo $version)"
