# Runs inside the container that systemd/try-under-systemd.sh boots; $1 is the checkout.
CHECKOUT=$1
show() { systemctl show vnetd -p ActiveState -p SubState -p StatusText -p WatchdogUSec -p WatchdogTimestampMonotonic -p MainPID -p NRestarts -p Type; }
wait_for() { for i in $(seq 1 300); do systemctl show vnetd -p StatusText | grep -q "$1" && return 0; sleep 0.1; done; echo "TIMEOUT waiting for $1"; }
echo "== after start"; show
systemctl is-active vnetd
echo "== security (systemd as PID 1)"; systemd-analyze security vnetd.service --no-pager | tail -1
wd1=$(systemctl show vnetd -p WatchdogTimestampMonotonic --value); sleep 1; wd2=$(systemctl show vnetd -p WatchdogTimestampMonotonic --value)
echo "watchdog timestamps $wd1 $wd2"
echo "== reload good (log_level debug, datapath.io socket)"; printf 'log_level: debug\ndatapath:\n  io: socket\n' > /etc/vnet/vnetd.yaml
systemctl reload vnetd; echo "reload rc $?"; wait_for "needs a restart"; show
echo "== reload bad"; printf 'log_level: loud\n' > /etc/vnet/vnetd.yaml
systemctl reload vnetd; echo "reload rc $?"; wait_for "reload refused"; show
echo "== journal"; journalctl -u vnetd --no-pager | tail -25
echo "== api"; $CHECKOUT/.venv/bin/vnet --socket /run/vnet/vnetd.sock status 2>&1 | head -5 || true
echo "== wedge via SIGSTOP: watchdog must restart it"; pid=$(systemctl show vnetd -p MainPID --value); kill -STOP $pid
for i in $(seq 1 900); do n=$(systemctl show vnetd -p MainPID --value); [ "$n" != "$pid" ] && [ "$n" != 0 ] && break; sleep 0.1; done
show; journalctl -u vnetd --no-pager | grep -i -E "watchdog|timeout" | tail -5
echo "== stop"; systemctl stop vnetd; show
systemctl poweroff
