#!/bin/bash
# The test bed's guest side: runs as bed-test.service once the Debian system under test has
# booted with systemd as PID 1. It does what an operator does (install the .deb with apt, edit
# the config, restart, stop, purge) and keeps every fact in /bed/results; the host reads them
# back from this disk and judges them (xtask/src/bed/checks.rs), so a check's verdict never
# depends on this script's own logic. Progress lines go to the serial console as `bed: …`.
set -u
R=/bed/results
mkdir -p "$R"
# bpftool, ip and nft live in sbin.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "bed: $*" >/dev/console; }
# Runs a command, keeping its output and exit code as results/<name> and results/<name>.rc.
keep() {
	local name=$1
	shift
	"$@" >"$R/$name" 2>&1
	echo $? >"$R/$name.rc"
}
# Waits up to $1 seconds for the service to settle into active or failed.
settle() {
	local i
	for ((i = 0; i < $1 * 2; i++)); do
		case $(systemctl is-active keepalive-daemon) in
		active | failed) return 0 ;;
		esac
		sleep 0.5
	done
}
# Polls $1 (a URL) until its body matches the extended regex $2, for up to $3 seconds.
wait_for() {
	local i
	for ((i = 0; i < $3 * 2; i++)); do
		curl -sf "$1" | grep -Eq "$2" && return 0
		sleep 0.5
	done
	return 1
}
PORT=19180
BASE=http://127.0.0.1:$PORT

say "started at $(cut -d' ' -f1 /proc/uptime) s of uptime"
keep system-running systemctl is-system-running --wait
keep kernel uname -r
keep systemd-version systemctl --version
keep boot-time systemd-analyze time

# A real service under systemd whose connections keepalive watches: redis with its own
# keepalive (tcp-keepalive 2 gives idle 2 s, interval 1 s, 3 probes), reachable from a
# client network namespace over a veth pair the bed creates.
sed -i -e 's/^bind .*/bind 0.0.0.0/' -e 's/^protected-mode .*/protected-mode no/' \
	-e 's/^tcp-keepalive .*/tcp-keepalive 2/' /etc/redis/redis.conf
keep redis-restart systemctl restart redis-server
ip netns add client
ip link add bed0 type veth peer name bed1 netns client
ip addr add 10.231.0.1/24 dev bed0
ip link set bed0 up
ip -n client addr add 10.231.0.2/24 dev bed1
ip -n client link set bed1 up
ip -n client link set lo up
# Connection A exists before the package is installed: the daemon's startup walk must learn it.
ip netns exec client redis-cli -h 10.231.0.1 BLPOP bed:a 0 >/dev/null 2>&1 &
sleep 1
keep progs-before bpftool -j prog show
keep links-before bpftool -j link show

say "installing the package"
keep install apt-get install -y --no-install-recommends /bed/keepalive-daemon.deb
settle 180
keep show-installed systemctl show keepalive-daemon -p Type -p ActiveState -p SubState \
	-p MainPID -p NRestarts -p Result -p StatusText -p ExecMainStatus -p UnitFileState
PID=$(systemctl show keepalive-daemon -p MainPID --value)
keep status-installed cat "/proc/$PID/status"
keep task-caps sh -c "grep -H '^Cap' /proc/$PID/task/*/status"
keep security systemd-analyze security --no-pager keepalive-daemon.service
wait_for "$BASE/metrics" '^keepalive_' 30
keep metrics-installed curl -sf "$BASE/metrics"

# Connection B appears while the daemon runs; then the operator turns on JSON events (into the
# journal) and restarts: the new daemon must relearn both connections.
ip netns exec client redis-cli -h 10.231.0.1 BLPOP bed:b 0 >/dev/null 2>&1 &
sleep 1
sed -i 's/^# json = false/json = true/' /etc/keepalive-daemon/config.toml
keep config-json grep -n '^json' /etc/keepalive-daemon/config.toml
say "restarting the daemon"
keep restart systemctl restart keepalive-daemon
settle 180
keep show-restarted systemctl show keepalive-daemon -p ActiveState -p SubState -p MainPID \
	-p NRestarts -p Result -p StatusText
wait_for "$BASE/metrics" '^keepalive_' 30
keep sockets-restarted curl -sf "$BASE/sockets?unit=redis-server.service"

# An upgrade in place (the same package at a higher version): the edited conffile stays, the
# maintainer scripts restart the service, and the new daemon carries on with the rest.
say "upgrading the package"
keep upgrade apt-get install -y --no-install-recommends /bed/keepalive-daemon-upgrade.deb
settle 180
keep show-upgraded systemctl show keepalive-daemon -p ActiveState -p SubState -p MainPID \
	-p NRestarts -p Result
keep version-upgraded dpkg-query -W keepalive-daemon
keep config-upgraded grep -n '^json' /etc/keepalive-daemon/config.toml
wait_for "$BASE/metrics" '^keepalive_' 30

# The partition: the client namespace drops everything it receives, so redis's probes go
# unanswered and keepalive declares both connections dead (about 5 s).
say "partitioning the client namespace"
ip netns exec client nft -f - <<'EOF'
table inet bed {
	chain input {
		type filter hook input priority 0; policy drop;
	}
}
EOF
wait_for "$BASE/metrics" '^keepalive_dead_connections_total\{[^}]*unit="redis-server.service"[^}]*\} 2$' 60
keep metrics-dead curl -sf "$BASE/metrics"
keep progs-running bpftool -j prog show
keep links-running bpftool -j link show

say "stopping the daemon"
keep stop systemctl stop keepalive-daemon
keep show-stopped systemctl show keepalive-daemon -p ActiveState -p Result -p ExecMainStatus
keep progs-stopped bpftool -j prog show
keep links-stopped bpftool -j link show

# A broken config: the unit must fail with one error line at the journal's error priority.
cp /etc/keepalive-daemon/config.toml /bed/config.good
# (At the top: below a [table] header the key would belong to that table.)
sed -i '1i hook-mode = "sideways"' /etc/keepalive-daemon/config.toml
keep start-broken systemctl start keepalive-daemon
keep show-broken systemctl show keepalive-daemon -p ActiveState -p Result -p ExecMainStatus
systemctl stop keepalive-daemon
systemctl reset-failed keepalive-daemon
cp /bed/config.good /etc/keepalive-daemon/config.toml

keep journal journalctl -b -u keepalive-daemon -o json --no-pager
say "purging the package"
keep purge apt-get purge -y keepalive-daemon
keep etc-after-purge ls -A /etc/keepalive-daemon
keep unit-after-purge systemctl cat keepalive-daemon.service
keep journal-all journalctl -b -o short-monotonic --no-pager
sync
say "done"
systemctl poweroff
