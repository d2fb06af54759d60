#!/bin/bash
# Boot a real systemd (PID 1, systemd-nspawn) on a minimal root that borrows this machine's
# /usr, install systemd/vnetd.service in it, and let systemd/nspawn-probe.sh drive it: start
# (READY, STATUS), reload with a good and a bad file, the watchdog restarting a SIGSTOP'd
# vnetd, stop.  The container has its own network namespace (--private-network): nothing
# touches the machine's network.  Needs systemd-container (apt-get install systemd-container)
# and root; run it under the integration lock:
#   flock /tmp/vnet-integration.lock systemd/try-under-systemd.sh
# The probe's output ends up in $WORK/out/probe.log (printed at the end).
set -euo pipefail
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vnetd-nspawn-XXXXXX)}
ROOT=$WORK/root
mkdir -p "$ROOT"/{usr,etc/systemd/system/multi-user.target.wants,etc/vnet,var/lib,run,tmp,proc,sys,dev,root} "$WORK/out"
mkdir -p "$ROOT$CHECKOUT"
for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$ROOT/$d"; done
grep -E "^(root|nobody|messagebus|systemd-[a-z-]+):" /etc/passwd > "$ROOT/etc/passwd"
grep -E "^(root|nogroup|messagebus|systemd-[a-z-]+|tty|adm|kvm|disk|utmp):" /etc/group > "$ROOT/etc/group"
: > "$ROOT/etc/machine-id"
cp /etc/os-release "$ROOT/etc/"
sed "s#/usr/local/bin/vnetd#$CHECKOUT/.venv/bin/vnetd#" "$CHECKOUT/systemd/vnetd.service" \
    > "$ROOT/etc/systemd/system/vnetd.service"
ln -sfn ../vnetd.service "$ROOT/etc/systemd/system/multi-user.target.wants/vnetd.service"
echo "log_level: info" > "$ROOT/etc/vnet/vnetd.yaml"
cat > "$ROOT/etc/systemd/system/vnet-probe.service" <<UNIT
[Unit]
Description=probe vnetd under a real systemd
After=vnetd.service
[Service]
Type=oneshot
ExecStart=/bin/bash /out/probe.sh $CHECKOUT
StandardOutput=file:/out/probe.log
StandardError=inherit
[Install]
WantedBy=multi-user.target
UNIT
ln -sfn ../vnet-probe.service "$ROOT/etc/systemd/system/multi-user.target.wants/vnet-probe.service"
cp "$CHECKOUT/systemd/nspawn-probe.sh" "$WORK/out/probe.sh"
# The venv's interpreter may live outside /usr (pyenv): bind its installation too.
PYHOME=$(dirname "$(dirname "$(readlink -f "$CHECKOUT/.venv/bin/python")")")
timeout 300 systemd-nspawn -D "$ROOT" --bind-ro=/usr --bind-ro="$CHECKOUT" --bind-ro="$PYHOME" \
    --bind="$WORK/out:/out" --private-network --boot --register=no --keep-unit \
    --capability=all --console=pipe > "$WORK/nspawn.log" 2>&1 || true
cat "$WORK/out/probe.log"
