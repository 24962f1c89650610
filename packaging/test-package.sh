#!/usr/bin/env bash
# test-package.sh: installs the built hearth-daemon .deb as root and checks users, files, unit, sandbox score, a loopback run, upgrade, remove and purge.
#
# CI runs it as root after `cargo deb -p hearth-daemon` has built
# target/debian/hearth-daemon_*.deb. It needs these Debian packages, which
# CI installs first:
#   apt-get install -y --no-install-recommends \
#       systemd man-db bash-completion zsh fish mosquitto-clients python3
# (plus adduser, util-linux and passwd, which every Debian system has).
#
# Usage: packaging/test-package.sh [path/to/hearth-daemon_*.deb]
#
# Where systemd is not PID 1 (CI's container) it starts hearthd by hand the
# way the unit would: as hearth:hearth-admin, umask 0077, with
# STATE_DIRECTORY/RUNTIME_DIRECTORY set, and it collects sd_notify's READY=1
# itself. Where systemd runs, it drives the service with systemctl instead.
# It only uses loopback (127.0.0.1:8883 and :8443) with mDNS off, stops by itself, and removes its
# test user, processes and files on exit. On failure it also purges the
# package it installed (set HEARTH_TEST_KEEP=1 to keep it for a look).
# The last line is `package: N passed, 0 failed`.
set -euo pipefail


PKG=hearth-daemon
UNIT_NAME=hearthd.service
MQTT_PORT=8883
ENROLL_PORT=8443
WEB_PORT=8444
TEST_USER=hearthpkgtest
STATE=/var/lib/hearth
RUNTIME=/run/hearth
CONFFILE=/etc/hearth/hearth.toml
READY_TIMEOUT=30
STOP_TIMEOUT=15

cd "$(dirname "$0")/.."

PASSED=0
FAILED=0
pass() {
    PASSED=$((PASSED + 1))
    printf 'ok %d - %s\n' "$PASSED" "$1"
}
fail() {
    FAILED=1
    printf '\nFAIL: %s\n' "$1" >&2
    shift
    if [ $# -gt 0 ]; then printf '%s\n' "$@" >&2; fi
    printf 'package: %d passed, 1 failed\n' "$PASSED"
    exit 1
}
# check DESCRIPTION COMMAND...: one counted check.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what" "(failed: $*)"; fi
}
# has_stat PATH "MODE OWNER GROUP" [TYPE]
has_stat() {
    local got
    got=$(stat -c '%a %U %G' "$1" 2>/dev/null) || { echo "  $1: missing" >&2; return 1; }
    if [ "$got" != "$2" ]; then
        echo "  $1: $got, want $2" >&2
        return 1
    fi
}
is_alive() {
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
as_test_user() { runuser -u "$TEST_USER" -- "$@"; }
status_of() { dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null || echo not-installed; }

# --- preflight -------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "run me as root (dpkg, useradd, runuser)"
if [ $# -ge 1 ]; then
    DEB=$1
else
    # The newest one, if several versions were built.
    DEB=
    for f in target/debian/"$PKG"_*.deb; do
        if [ -f "$f" ] && { [ -z "$DEB" ] || [ "$f" -nt "$DEB" ]; }; then DEB=$f; fi
    done
fi
if [ -z "$DEB" ] || [ ! -f "$DEB" ]; then
    fail "no package: build it with 'cargo deb -p $PKG' (looked in target/debian/)"
fi
DEB=$(realpath "$DEB")
for tool in dpkg dpkg-query systemd-analyze man mosquitto_pub python3 runuser setpriv \
    useradd userdel sha256sum bash zsh fish; do
    command -v "$tool" >/dev/null || fail "$tool is missing: apt-get install systemd man-db bash-completion zsh fish mosquitto-clients python3"
done
case "$(status_of)" in
    not-installed | config-files | "") ;;
    *) fail "$PKG is already installed here; this test installs and purges it itself (dpkg -P $PKG first)" ;;
esac
if [ -d /run/systemd/system ]; then MODE=systemd; else MODE=manual; fi
if [ "$MODE" = manual ]; then
    for port in "$MQTT_PORT" "$ENROLL_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            fail "127.0.0.1:$port is already in use; stop whatever listens there"
        fi
    done
fi
echo "== testing $DEB (mode: $MODE)"
cd /

WORK=$(mktemp -d /run/hearth-pkgtest.XXXXXX)
chmod 0711 "$WORK"
TEST_CONF=$WORK/hearth-test.toml
# Tests never send traffic on real interfaces: every listener binds
# loopback and mDNS advertisement (multicast on every LAN) is off.
cat >"$TEST_CONF" <<EOF
# test-package.sh: the packaged defaults, but loopback only and no mDNS.
[mqtt]
listen = "127.0.0.1:$MQTT_PORT"

[enroll]
listen = "127.0.0.1:$ENROLL_PORT"

[web]
listen = "127.0.0.1:$WEB_PORT"

[discovery]
enabled = false
EOF
chmod 0644 "$TEST_CONF"
DROPIN_DIR=/run/systemd/system/$UNIT_NAME.d
DAEMON_PID=
NOTIFY_PID=
INSTALLED_BY_US=0
CREATED_USER=0

cleanup() {
    local rc=$?
    set +e
    if [ -n "$DAEMON_PID" ] && is_alive "$DAEMON_PID"; then
        kill -TERM "$DAEMON_PID"
        sleep 1
        is_alive "$DAEMON_PID" && kill -KILL "$DAEMON_PID"
        wait "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "$NOTIFY_PID" ] && is_alive "$NOTIFY_PID"; then
        kill "$NOTIFY_PID"
        wait "$NOTIFY_PID" 2>/dev/null
    fi
    if [ "$FAILED" -ne 0 ] || [ "$rc" -ne 0 ]; then
        echo "--- hearthd log (last 60 lines)" >&2
        if [ "$MODE" = systemd ]; then
            journalctl -u "$UNIT_NAME" -n 60 --no-pager >&2
        elif [ -f "$WORK/hearthd.log" ]; then
            tail -n 60 "$WORK/hearthd.log" >&2
        fi
        if [ "$INSTALLED_BY_US" -eq 1 ] && [ "${HEARTH_TEST_KEEP:-0}" != 1 ]; then
            echo "--- purging $PKG (HEARTH_TEST_KEEP=1 keeps it)" >&2
            dpkg -P "$PKG" >/dev/null 2>&1
        fi
    fi
    if [ "$CREATED_USER" -eq 1 ]; then
        pkill -KILL -u "$TEST_USER" 2>/dev/null
        userdel "$TEST_USER" 2>/dev/null
    fi
    if [ "$MODE" = systemd ]; then
        rm -rf "$DROPIN_DIR"
        systemctl daemon-reload 2>/dev/null
    elif [ "$(status_of)" != installed ]; then
        # Made by hand below, as systemd's RuntimeDirectory= would have.
        rm -rf "$RUNTIME"
    fi
    rm -rf "$WORK"
    if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then
        printf 'FAIL: unexpected error (exit %d)\npackage: %d passed, 1 failed\n' "$rc" "$PASSED"
    fi
}
trap cleanup EXIT
# Interrupted (Ctrl-C, CI cancelling the job): still clean up, via EXIT.
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$MODE" = systemd ]; then
    # Point the service at the loopback config before postinst starts it.
    mkdir -p "$DROPIN_DIR"
    printf '[Service]\nExecStart=\nExecStart=/usr/bin/hearthd --config %s\n' "$TEST_CONF" \
        >"$DROPIN_DIR/50-test-package.conf"
fi

# --- start/stop the daemon as the unit would --------------------------------
NOTIFY_PY='
import os, socket, sys, time
path, timeout = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
deadline = time.monotonic() + timeout
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        print("no READY=1 within %gs" % timeout, flush=True)
        sys.exit(1)
    s.settimeout(left)
    try:
        msg = s.recv(4096).decode(errors="replace")
    except socket.timeout:
        continue
    print("got: " + msg.replace("\n", " "), flush=True)
    if "READY=1" in msg.split("\n"):
        sys.exit(0)
'

start_daemon() {
    if [ "$MODE" = systemd ]; then
        systemctl start "$UNIT_NAME" || fail "systemctl start $UNIT_NAME failed"
        check "hearthd.service is active (Type=notify: READY=1 arrived)" systemctl is-active --quiet "$UNIT_NAME"
        return
    fi
    # What StateDirectory=/RuntimeDirectory= would create (modes and
    # owners checked against the unit above).
    install -d -m 0700 -o hearth -g hearth-admin "$STATE"
    install -d -m 0750 -o hearth -g hearth-admin "$RUNTIME"
    local sock=$WORK/notify.sock uid gid rc
    rm -f "$sock"
    python3 -c "$NOTIFY_PY" "$sock" "$READY_TIMEOUT" >"$WORK/notify.log" 2>&1 &
    NOTIFY_PID=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || fail "the sd_notify stand-in did not start" "$(cat "$WORK/notify.log")"
    uid=$(id -u hearth)
    gid=$(getent group hearth-admin | cut -d: -f3)
    (
        umask 0077
        cd /
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
            STATE_DIRECTORY="$STATE" RUNTIME_DIRECTORY="$RUNTIME" \
            CONFIGURATION_DIRECTORY=/etc/hearth NOTIFY_SOCKET="$sock" \
            setpriv --reuid="$uid" --regid="$gid" --groups="$gid" \
            --inh-caps=-all --bounding-set=-all --no-new-privs -- \
            /usr/bin/hearthd --config "$TEST_CONF"
    ) >>"$WORK/hearthd.log" 2>&1 &
    DAEMON_PID=$!
    while is_alive "$NOTIFY_PID"; do
        if ! is_alive "$DAEMON_PID"; then
            fail "hearthd exited during startup" "$(tail -n 30 "$WORK/hearthd.log")"
        fi
        sleep 0.2
    done
    rc=0
    wait "$NOTIFY_PID" || rc=$?
    NOTIFY_PID=
    check "hearthd sent READY=1 to \$NOTIFY_SOCKET (Type=notify)" test "$rc" -eq 0
    check "hearthd is still running after READY=1" is_alive "$DAEMON_PID"
}

# What hearthd must tell the service manager on SIGHUP: RELOADING=1 with
# MONOTONIC_USEC= (systemd v253 on refuses RELOADING=1 without it), then
# READY=1 once the new settings are in force (or refused).
RELOAD_PY='
import os, socket, sys, time
path, timeout = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
deadline = time.monotonic() + timeout
reloading = False
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        print("no RELOADING=1 + MONOTONIC_USEC= then READY=1 within %gs" % timeout, flush=True)
        sys.exit(1)
    s.settimeout(left)
    try:
        msg = s.recv(4096).decode(errors="replace")
    except socket.timeout:
        continue
    print("got: " + msg.replace("\n", " "), flush=True)
    lines = msg.split("\n")
    if "RELOADING=1" in lines and any(l.startswith("MONOTONIC_USEC=") for l in lines):
        reloading = True
    elif "READY=1" in lines and reloading:
        sys.exit(0)
'

# `systemctl reload` (ExecReload= sends SIGHUP), or the same by hand.
reload_daemon() {
    if [ "$MODE" = systemd ]; then
        systemctl reload "$UNIT_NAME" || fail "systemctl reload $UNIT_NAME failed"
        check "hearthd.service is active after the reload" systemctl is-active --quiet "$UNIT_NAME"
        return
    fi
    local sock=$WORK/notify.sock rc=0
    rm -f "$sock"
    python3 -c "$RELOAD_PY" "$sock" "$READY_TIMEOUT" >"$WORK/notify-reload.log" 2>&1 &
    NOTIFY_PID=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || fail "the sd_notify stand-in did not start" "$(cat "$WORK/notify-reload.log")"
    kill -HUP "$DAEMON_PID"
    wait "$NOTIFY_PID" || rc=$?
    NOTIFY_PID=
    [ "$rc" -eq 0 ] || cat "$WORK/notify-reload.log" >&2
    check "on SIGHUP hearthd sent RELOADING=1 with MONOTONIC_USEC=, then READY=1" test "$rc" -eq 0
    check "hearthd is still running after the reload" is_alive "$DAEMON_PID"
}

stop_daemon() {
    if [ "$MODE" = systemd ]; then
        systemctl stop "$UNIT_NAME"
        check "hearthd stopped cleanly on SIGTERM (exit 0)" \
            test "$(systemctl show -P ExecMainStatus "$UNIT_NAME")" = 0
        return
    fi
    local rc=0
    kill -TERM "$DAEMON_PID"
    for _ in $(seq $((STOP_TIMEOUT * 10))); do
        is_alive "$DAEMON_PID" || break
        sleep 0.1
    done
    if is_alive "$DAEMON_PID"; then
        fail "hearthd still runs ${STOP_TIMEOUT}s after SIGTERM"
    fi
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=
    check "hearthd stopped cleanly on SIGTERM (exit $rc, want 0)" test "$rc" -eq 0
}

# mqtt_publish DIR ID: a mutual-TLS publish with Debian's mosquitto_pub.
mqtt_publish() {
    local out
    out=$(timeout 20 mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" \
        --cafile "$1/ca.pem" --cert "$1/device.pem" --key "$1/device.key" \
        -i "$2" -t "hearth/v1/dev/$2/tele/x" -m 1 -d 2>&1) || { echo "$out" >&2; return 1; }
    grep -q 'received CONNACK (0)' <<<"$out" || { echo "$out" >&2; return 1; }
}

# --- install ----------------------------------------------------------------
echo "== install"
dpkg -i "$DEB" || fail "dpkg -i $DEB failed"
INSTALLED_BY_US=1
check "package is installed" test "$(status_of)" = installed
check "system user hearth exists" getent passwd hearth
check "hearth's home is $STATE, no login shell" \
    test "$(getent passwd hearth | cut -d: -f6,7)" = "$STATE:/usr/sbin/nologin"
check "hearth's primary group is hearth" \
    test "$(id -gn hearth)" = hearth
check "hearth is a system user (uid < 1000)" test "$(id -u hearth)" -lt 1000
check "group hearth-admin exists" getent group hearth-admin
for bin in hearthd hearth hearth-device; do
    check "/usr/bin/$bin is installed 755 root:root" has_stat "/usr/bin/$bin" "755 root root"
done
VERSION=$(dpkg-query -W -f='${Version}' "$PKG")
UPSTREAM=${VERSION%-*}
for bin in hearthd hearth hearth-device; do
    check "$bin --version says $UPSTREAM" grep -qF "$UPSTREAM" <<<"$("/usr/bin/$bin" --version)"
done
check "$CONFFILE is installed 644 root:root" has_stat "$CONFFILE" "644 root root"
check "$CONFFILE is a dpkg conffile" \
    grep -qE "^ $CONFFILE [0-9a-f]{32}" <<<"$(dpkg-query -W -f='${Conffiles}\n' "$PKG")"
UNIT=
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$dir/$UNIT_NAME" ]; then UNIT=$dir/$UNIT_NAME; break; fi
done
check "$UNIT_NAME is installed" test -n "$UNIT"
check "$UNIT is 644 root:root" has_stat "$UNIT" "644 root root"
check "$UNIT_NAME is enabled (multi-user.target.wants symlink)" \
    test -L "/etc/systemd/system/multi-user.target.wants/$UNIT_NAME"
if [ "$MODE" = systemd ]; then
    check "postinst started $UNIT_NAME" systemctl is-active --quiet "$UNIT_NAME"
fi
DEPENDS=$(dpkg-query -W -f='${Depends}' "$PKG")
echo "Depends: $DEPENDS"
check "Depends has libc6" grep -qE '(^|, )libc6( |,|$)' <<<"$DEPENDS"
check "Depends has adduser (postinst uses it)" grep -qE '(^|, )adduser( |,|$)' <<<"$DEPENDS"
check "Depends has no libssl/libsqlite3 (ring and bundled SQLite)" \
    test -z "$(grep -oE 'libssl[^,]*|libsqlite3[^,]*' <<<"$DEPENDS" || true)"

# --- the unit ---------------------------------------------------------------
echo "== unit"
# The hand-made start below relies on these; keep the two in step.
for line in Type=notify User=hearth Group=hearth-admin UMask=0077 StateDirectory=hearth \
    StateDirectoryMode=0700 RuntimeDirectory=hearth RuntimeDirectoryMode=0750 \
    "ExecStart=/usr/bin/hearthd --config $CONFFILE" 'ExecReload=/bin/kill -HUP $MAINPID'; do
    check "unit says $line" grep -qxF "$line" "$UNIT"
done
VERIFY=$(systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify $UNIT" "$VERIFY"
check "systemd-analyze verify is clean" test -z "$(grep -F "$UNIT_NAME" <<<"$VERIFY" || true)"
SECURITY=$(systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1) ||
    fail "systemd-analyze security --offline=true $UNIT" "$SECURITY"
EXPOSURE=$(sed -n "s/.*Overall exposure level for $UNIT_NAME: \([0-9.]*\).*/\1/p" <<<"$SECURITY")
[ -n "$EXPOSURE" ] || fail "no exposure level in systemd-analyze security's output" "$SECURITY"
check "sandbox exposure $EXPOSURE <= 2.0 (systemd-analyze security)" \
    awk -v e="$EXPOSURE" 'BEGIN { exit !(e + 0 <= 2.0) }'

# --- docs and completions ---------------------------------------------------
echo "== man pages and completions"
for page in man8/hearthd.8 man1/hearth.1 man1/hearth-device.1; do
    file=/usr/share/man/$page.gz
    name=${page#*/}
    name=${name%.*}
    check "$file is installed 644 root:root" has_stat "$file" "644 root root"
    check "man -l $file renders" grep -qi "$name" <<<"$(MANWIDTH=80 man -l "$file" 2>/dev/null)"
    check "man finds $name at $file" test "$(man -w "$name" 2>/dev/null)" = "$file"
done
for cmd in hearth hearthd hearth-device; do
    check "bash completion for $cmd loads" \
        bash -c "source /usr/share/bash-completion/completions/$cmd && complete -p $cmd >/dev/null"
    # compinit finds _$cmd on Debian's default fpath by itself.
    check "zsh completion for $cmd is found and loads" \
        zsh -fc "autoload -U compinit && compinit -u -D && [[ \${_comps[$cmd]} == _$cmd ]] && autoload +X _$cmd"
    check "fish completion for $cmd loads" \
        grep -q -- '--help' <<<"$(fish -c "complete -C '$cmd --'")"
done
check "fish completes hearth's subcommands" \
    grep -q '^member' <<<"$(fish -c "complete -C 'hearth '")"

# --- config check -----------------------------------------------------------
echo "== check-config"
check "hearthd check-config accepts the packaged $CONFFILE" hearthd check-config "$CONFFILE"
check "hearthd check-config accepts the test config" hearthd check-config "$TEST_CONF"
printf '[mqtt]\nlisten_port = 1\n' >"$WORK/bad.toml"
check "hearthd check-config refuses an unknown key" \
    bash -c "! hearthd check-config '$WORK/bad.toml' 2>/dev/null"

# --- run ----------------------------------------------------------------------
echo "== run ($MODE)"
start_daemon
check "$STATE is 700 hearth:hearth-admin" has_stat "$STATE" "700 hearth hearth-admin"
check "$RUNTIME is 750 hearth:hearth-admin" has_stat "$RUNTIME" "750 hearth hearth-admin"
check "$RUNTIME/admin.sock is a socket" test -S "$RUNTIME/admin.sock"
check "$RUNTIME/admin.sock is 660 hearth:hearth-admin" has_stat "$RUNTIME/admin.sock" "660 hearth hearth-admin"
check "$STATE/ca.key is 600 hearth:hearth-admin" has_stat "$STATE/ca.key" "600 hearth hearth-admin"
check "$STATE/hearth.db exists" test -f "$STATE/hearth.db"
check "someone outside hearth-admin cannot use the admin socket" \
    bash -c "! runuser -u nobody -- hearth --socket '$RUNTIME/admin.sock' status >/dev/null 2>&1"

if getent passwd "$TEST_USER" >/dev/null; then userdel "$TEST_USER"; fi
useradd --no-create-home --no-user-group --groups hearth-admin --shell /bin/sh "$TEST_USER"
CREATED_USER=1
install -d -m 0700 -o "$TEST_USER" "$WORK/ada"
check "a hearth-admin member reads the status" \
    as_test_user hearth --socket "$RUNTIME/admin.sock" status
check "a hearth-admin member adds member Ada" \
    as_test_user hearth --socket "$RUNTIME/admin.sock" member add Ada --role child
DEVICE_ID=$(as_test_user hearth --socket "$RUNTIME/admin.sock" device issue \
    --member Ada --label toy --out "$WORK/ada/toy") || fail "hearth device issue failed"
DEVICE_ID=$(head -n1 <<<"$DEVICE_ID")
check "hearth device issue printed a device id ($DEVICE_ID)" test -n "$DEVICE_ID"
for f in ca.pem device.pem device.key; do
    check "device issue wrote $f" test -s "$WORK/ada/toy/$f"
done
check "device.key is private (600)" test "$(stat -c %a "$WORK/ada/toy/device.key")" = 600
check "mosquitto_pub publishes as the new device over mutual TLS" \
    mqtt_publish "$WORK/ada/toy" "$DEVICE_ID"

echo "== reload ($MODE)"
printf '\n[audit]\nretention_days = 7\n' >>"$TEST_CONF"
reload_daemon
# Under systemd, `systemctl reload` may return before hearthd is done.
for _ in $(seq 50); do
    grep -q 'reloaded once' <<<"$(as_test_user hearth --socket "$RUNTIME/admin.sock" status)" && break
    sleep 0.1
done
check "hearth status says the config was reloaded" \
    grep -q "config: $TEST_CONF loaded .* (reloaded once)" \
    <<<"$(as_test_user hearth --socket "$RUNTIME/admin.sock" status)"
check "the reloaded audit retention is in the privacy report" \
    grep -q 'audit entries: .*kept 7 days' \
    <<<"$(as_test_user hearth --socket "$RUNTIME/admin.sock" privacy report)"
check "the device still publishes after the reload" mqtt_publish "$WORK/ada/toy" "$DEVICE_ID"
stop_daemon

# --- upgrade ----------------------------------------------------------------
echo "== upgrade"
CA_BEFORE=$(sha256sum "$STATE/ca.pem" | cut -d' ' -f1)
printf '# local edit by test-package.sh\n' >>"$CONFFILE"
dpkg -i --force-confold "$DEB" || fail "dpkg -i (upgrade) failed"
check "the local edit to $CONFFILE survived the upgrade" \
    grep -qx '# local edit by test-package.sh' "$CONFFILE"
check "$STATE/ca.pem is unchanged by the upgrade" \
    test "$(sha256sum "$STATE/ca.pem" | cut -d' ' -f1)" = "$CA_BEFORE"
if [ "$MODE" = systemd ]; then
    check "postinst restarted hearthd.service" systemctl is-active --quiet "$UNIT_NAME"
else
    start_daemon
fi
check "the CA is unchanged after a restart" \
    test "$(sha256sum "$STATE/ca.pem" | cut -d' ' -f1)" = "$CA_BEFORE"
check "the device is still listed and active" grep -qE "^${DEVICE_ID}[[:space:]].*active" \
    <<<"$(as_test_user hearth --socket "$RUNTIME/admin.sock" device list)"
check "the device still publishes" mqtt_publish "$WORK/ada/toy" "$DEVICE_ID"
stop_daemon

# --- remove and purge -------------------------------------------------------
echo "== remove"
dpkg -r "$PKG" || fail "dpkg -r $PKG failed"
check "package is removed, config kept" test "$(status_of)" = config-files
check "/usr/bin/hearthd is gone" test ! -e /usr/bin/hearthd
check "$UNIT is gone" test ! -e "$UNIT"
check "$STATE is kept on remove" test -f "$STATE/ca.pem"
check "$CONFFILE is kept on remove" test -f "$CONFFILE"

echo "== purge"
dpkg -P "$PKG" || fail "dpkg -P $PKG failed"
INSTALLED_BY_US=0
check "package is purged" test "$(status_of)" = not-installed
check "$STATE is gone after purge" test ! -e "$STATE"
check "$CONFFILE is gone after purge" test ! -e "$CONFFILE"
check "the enable symlink is gone after purge" \
    test ! -L "/etc/systemd/system/multi-user.target.wants/$UNIT_NAME"

echo "package: $PASSED passed, 0 failed"
