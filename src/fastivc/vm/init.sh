#!/bin/sh
# /init of a fastivc guest (busybox).  Mounts the pseudo file systems, loads
# the modules listed in /etc/fastivc/modules (in dependency order), configures
# eth0 from fastivc.ip= on the kernel command line, prints FASTIVC-READY on the
# console, then serves the host's agent on /dev/ttyS1: one base64-encoded shell
# script per line in, its output (base64) between markers out.  fastivc.cmd=
# (base64) instead runs one command, prints its output the same way on the
# console and powers off.
export PATH=/opt/fastivc/libexec:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts /tmp /run
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t devpts devpts /dev/pts
for m in $(cat /etc/fastivc/modules); do
	insmod "/lib/modules/$m.ko" || echo "FASTIVC-ERROR insmod $m"
done

ip=
cmd=
name=guest
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	fastivc.ip=*) ip="${arg#fastivc.ip=}" ;;
	fastivc.cmd=*) cmd="${arg#fastivc.cmd=}" ;;
	fastivc.name=*) name="${arg#fastivc.name=}" ;;
	esac
done
hostname "$name"
ip link set lo up
if [ -n "$ip" ]; then
	ip addr add "$ip" dev eth0 && ip link set eth0 up || echo "FASTIVC-ERROR eth0 $ip"
fi

run() {  # run(script file, output file): prints the markers and the output on stdout
	sh "$1" >"$2" 2>&1 </dev/null
	rc=$?
	echo "FASTIVC-BEGIN"
	base64 "$2"
	echo "FASTIVC-END $rc"
}

if [ -z "$cmd" ]; then
	# Open the agent's line once and keep it open: the UART's FIFO is cleared
	# whenever the port is opened, so a line that arrived before an open
	# would be lost.  The host sends nothing before FASTIVC-AGENT on it.
	exec 3<>/dev/ttyS1
	stty raw -echo <&3
fi
echo "FASTIVC-READY $(uname -r)"
if [ -n "$cmd" ]; then
	echo "$cmd" | base64 -d >/tmp/cmd.sh
	run /tmp/cmd.sh /tmp/cmd.out
	poweroff -f
fi

echo "FASTIVC-AGENT" >&3
n=0
while read -r line <&3; do
	n=$((n + 1))
	echo "$line" | base64 -d >/tmp/agent.$n.sh
	run /tmp/agent.$n.sh /tmp/agent.$n.out >&3
	rm -f /tmp/agent.$n.sh /tmp/agent.$n.out
done
echo "FASTIVC-AGENT-EOF"
poweroff -f
