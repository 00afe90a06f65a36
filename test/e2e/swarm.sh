#!/bin/bash
# `make e2e-swarm`: cio as the volume plugin of a real 3-host Docker Swarm, on one machine.
#
# Each "host" is a network namespace (own IP on a private bridge, no route out),
# a persistent mount + UTS namespace (own hostname, own tmpfs /run — so its own
# /run/docker/plugins/cio.sock —, own /etc/docker, sysfs of its netns) and a
# cgroup subtree /PFXhN (pids, freezer, cpuacct) holding that host's dockerd,
# containerd, containers, and its ciod with ciod's nbdfuse. One etcd runs in the
# bridge's namespace, reachable by all hosts. The Swarm has 3 managers,
# dispatcher heartbeat 1 s; services use --restart-delay 0s and stay off the
# Swarm leader (a leader crash takes ~20-40 s to reschedule).
#
# Scenarios (each prints one line "SCENARIO NAME: …"):
#   crash   a writer service on a cio volume; the host running it loses its link
#           and every process in its cgroup is SIGKILLed; Swarm restarts the task
#           elsewhere; every record acknowledged before the crash must be there,
#           and the writer continues. The host is then "rebooted" (same ciod data
#           dir, so same NODE_ID) and must be `normal` in `cio node ls` again.
#   freeze  the same with the host frozen (cgroup freezer), thawed after the
#           takeover: nothing the old writer writes after the takeover may reach
#           the data the new writer sees.
#   partition  the same with the host's link cut (it runs on, cut off from etcd, its
#           peers and the Swarm), reconnected after the takeover.
#   stack   `docker stack deploy` of a stack file with driver: cio and
#           driver_opts {profile: MYSQL, capacity: 1}; the volume must be 3-copy.
#
# The writer (writer.sh from write_writer below, busybox sh) appends "R HOST CID SEQ" to /data/log,
# fsyncs it (busybox `sync FILE`), and only then appends SEQ to an ack file
# outside the volume; test/e2e/swarm-tool.ts `check` compares the two.
#
# usage: test/e2e/swarm.sh [all|crash|freeze|partition|stack]...   (default all; needs root, a build in dist/)
#        test/e2e/swarm.sh up | down | status | dk N ARGS | hx N CMD | cio ARGS   (a lab to poke at)
# env:   E2E_DIR=/tmp/cio-e2e-swarm E2E_PFX=cxe E2E_NET=10.99.0 (a second lab needs other values of all three)
#        E2E_KEEP=1 (keep files after teardown)  E2E_NO_DOWN=1 (leave the lab running at the end)
#        E2E_WRITE_SECS=8 (writing before the failure)  E2E_LEASE_TTL=5 (ciod lease, the default)  CIO_DIST=dist
set -uo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
DIST=${CIO_DIST:-$ROOT/dist}
L=${E2E_DIR:-/tmp/cio-e2e-swarm}; PFX=${E2E_PFX:-cxe}; NET=${E2E_NET:-10.99.0}
NH=3; IMG=$PFX-busybox:latest; HB=1s
LEASE_TTL=${E2E_LEASE_TTL:-5}; WRITE_SECS=${E2E_WRITE_SECS:-8}
FAILOVER_MAX=${E2E_FAILOVER_MAX:-90}
ETCD_IP=$NET.10
export DOCKER_API_VERSION=1.41      # a newer CLI on the PATH talking to dockerd 20.10
DOCKER=/usr/bin/docker; [ -x $DOCKER ] || DOCKER=$(command -v docker)
NODE=$(command -v node)
SHARE=$L/share                      # bind-mounted into the writers at /e2e: writer.sh and acks/
RES=$L/results
FAILED=0
declare -a SUMMARY=()

log() { printf '%s %s\n' "$(date +%T.%3N)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN{printf "%.1f", a-b}'; }
hx() { local n=$1; shift; nsenter --net=/run/netns/$PFX-h$n --mount=$L/ns/h$n.mnt --uts=$L/ns/h$n.uts -- "$@"; }
dk() { local n=$1; shift; $DOCKER -H unix://$L/h$n/docker.sock "$@"; }
# the CLI runs in the bridge's namespace, from where every host's API is reachable
cio() { CIO_HOME=$L/cli nsenter --net=/run/netns/$PFX-net -- $NODE $DIST/src/cli/main.js "$@"; }
# run "$@" inside host n as a member of its cgroups (so crash/freeze/accounting cover it)
hcg() { local n=$1; shift
  sh -c 'n=$1; L=$2; PFX=$3; shift 3
    for c in pids freezer cpuacct; do echo $$ > /sys/fs/cgroup/$c/${PFX}h$n/cgroup.procs; done
    exec nsenter --net=/run/netns/$PFX-h$n --mount=$L/ns/h$n.mnt --uts=$L/ns/h$n.uts -- "$@"' sh $n $L $PFX "$@"; }
host_pids() { find /sys/fs/cgroup/pids/${PFX}h$1 -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un; }
wait_for() { local t=$1; shift; local end=$((SECONDS + t)); while [ $SECONDS -lt $end ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
# JSON on stdin, a JS expression over it as j
jq_() { $NODE -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const v=new Function("j","return ("+process.argv[1]+")")(j);console.log(typeof v==="object"?JSON.stringify(v):v)})' "$1"; }
declare -a SCN_FAILS=()
fail() { log "FAILED: $*"; FAILED=1; SCN_FAILS+=("$*"); }
# the scenario's line: "SCENARIO NAME: figures", and what failed, if anything did
summary() { local line="SCENARIO $1: $2"; [ ${#SCN_FAILS[@]} = 0 ] || line="$line; FAILED: ${SCN_FAILS[*]}"; SUMMARY+=("$line"); }

# ---------------------------------------------------------------- lab ---------

preflight() {
  [ "$(id -u)" = 0 ] || { echo "run as root (namespaces, cgroups, mounts)" >&2; exit 2; }
  local missing=""
  for c in dockerd containerd runc nsenter unshare ip etcd nbdfuse losetup mkfs.ext4 $NODE; do command -v $c >/dev/null || missing="$missing $c"; done
  [ -x "$DOCKER" ] || missing="$missing docker"
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing="$missing busybox-static"
  [ -f $DIST/src/agent/main.js ] && [ -f $DIST/test/e2e/swarm-tool.js ] || missing="$missing (build: npx tsc -p tsconfig.json)"
  for c in pids freezer cpuacct; do [ -d /sys/fs/cgroup/$c ] || missing="$missing cgroup-v1:$c"; done
  [ -z "$missing" ] || { echo "missing:$missing — \`make e2e-swarm\` installs the packages and builds" >&2; exit 2; }
  # the record checker must see what it is there to see, or every scenario passes for nothing
  $NODE --test --test-reporter=dot $DIST/test/e2e/swarm-tool.test.js >/dev/null 2>&1 || { echo "the record checker's own test fails: node --test $DIST/test/e2e/swarm-tool.test.js" >&2; exit 1; }
}

net_up() {
  ip netns add $PFX-net; ip -n $PFX-net link set lo up
  ip -n $PFX-net link add br0 type bridge; ip -n $PFX-net link set br0 up
  ip -n $PFX-net addr add $ETCD_IP/24 dev br0
  for n in $(seq 1 $NH); do
    ip netns add $PFX-h$n
    ip link add $PFX-h$n-br netns $PFX-net type veth peer name eth0 netns $PFX-h$n
    ip -n $PFX-net link set $PFX-h$n-br master br0 up
    ip -n $PFX-h$n link set lo up
    ip -n $PFX-h$n addr add $NET.1$n/24 dev eth0
    ip -n $PFX-h$n link set eth0 up
  done
}

ns_up() {  # persistent mount + uts namespace and cgroups of host n: its "boot"
  local n=$1 H=$L/h$1
  mkdir -p $L/ns $H/etc-docker $H/data $H/mnt
  mountpoint -q $L/ns || { mount --bind $L/ns $L/ns; mount --make-private $L/ns; }
  touch $L/ns/h$n.mnt $L/ns/h$n.uts
  for c in pids freezer cpuacct; do mkdir -p /sys/fs/cgroup/$c/${PFX}h$n; done
  nsenter --net=/run/netns/$PFX-h$n unshare --mount=$L/ns/h$n.mnt --uts=$L/ns/h$n.uts --propagation slave sh -ec "
    hostname $PFX-h$n
    mount -t tmpfs -o mode=755 tmpfs /run            # own /run/docker, /run/docker/plugins/cio.sock, /run/containerd
    mount --bind $H/etc-docker /etc/docker           # own key.json (engine ID)
    mkdir /run/.cg; mount --rbind /sys/fs/cgroup /run/.cg
    umount -l /sys; mount -t sysfs sysfs /sys        # /sys/class/net of this netns ...
    mount --move /run/.cg /sys/fs/cgroup; rmdir /run/.cg   # ... with the cgroup mounts kept
  "
}

etcd_up() {
  local p=$L/pki
  ( setsid nsenter --net=/run/netns/$PFX-net -- etcd --name $PFX-etcd --data-dir $L/etcd \
      --listen-client-urls https://$ETCD_IP:2379 --advertise-client-urls https://$ETCD_IP:2379 \
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
      --initial-cluster $PFX-etcd=http://127.0.0.1:2380 \
      --cert-file $p/etcd.crt --key-file $p/etcd.key --client-cert-auth --trusted-ca-file $p/ca.crt \
      --logger zap --log-level warn >> $L/etcd.log 2>&1 < /dev/null & echo $! > $L/etcd.pid )
  wait_for 20 nsenter --net=/run/netns/$PFX-net -- etcdctl --endpoints https://$ETCD_IP:2379 \
    --cacert $p/ca.crt --cert $p/cli.crt --key $p/cli.key endpoint health || { log "etcd did not come up"; tail -5 $L/etcd.log >&2; return 1; }
}

write_ciod_config() {
  local n=$1 H=$L/h$1 p=$L/pki
  mkdir -p $H/ciod $H/drive
  cat > $H/ciod.yaml <<EOF
clusterName: $PFX
name: $PFX-h$n
ip: $NET.1$n
apiPort: 7411
replicaPort: 7412
dataDir: $H/ciod
etcd: { endpoints: [https://$ETCD_IP:2379] }
tls: { ca: $p/ca.crt, cert: $p/$PFX-h$n.crt, key: $p/$PFX-h$n.key, token: $p/api-token, replicaSecret: $p/replica-secret }
drives:
  - { id: d1, path: $H/drive, type: ssd, capacity: 20GB }
leaseTtlSeconds: $LEASE_TTL
pluginSocket: /run/docker/plugins/cio.sock
mountRoot: $H/mnt
logLevel: info
EOF
}

start_ciod() {  # inside host n; the plugin socket is in the host's private /run
  local n=$1 H=$L/h$1
  ( setsid bash -c "$(declare -f hcg); L=$L; PFX=$PFX; hcg $n $NODE $DIST/src/agent/main.js --config $H/ciod.yaml" >> $H/ciod.log 2>&1 < /dev/null & )
  wait_for 30 hx $n test -S /run/docker/plugins/cio.sock || { log "ciod h$n did not open its plugin socket"; tail -5 $H/ciod.log >&2; return 1; }
}

start_dockerd() {
  local n=$1 H=$L/h$1
  rm -f $H/docker.pid
  ( setsid env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 bash -c "$(declare -f hcg); L=$L; PFX=$PFX; hcg $n dockerd \
      --data-root $H/data --exec-root /run/docker --pidfile $H/docker.pid -H unix://$H/docker.sock \
      --cgroup-parent /${PFX}h$n" >> $H/dockerd.log 2>&1 < /dev/null & )
  wait_for 60 dk $n version || { log "dockerd h$n did not come up"; tail -5 $H/dockerd.log >&2; return 1; }
  dk $n volume ls >/dev/null   # activates the legacy plugin, so the node advertises the cio driver to Swarm
}

image_up() {
  local R=$L/image/rootfs
  rm -rf $L/image; mkdir -p $R/bin $R/tmp $R/data $R/etc $R/proc $R/sys $R/dev $R/e2e
  cp /bin/busybox $R/bin/
  for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $R/bin/$a; done
  tar -C $R -cf $L/image/rootfs.tar .
  dk 1 import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' $L/image/rootfs.tar $IMG >/dev/null || return 1
  dk 1 save $IMG -o $L/image/img.tar || return 1
  for n in $(seq 2 $NH); do dk $n load -q -i $L/image/img.tar >/dev/null || return 1; done
}

swarm_up() {
  dk 1 swarm init --advertise-addr $NET.11 --listen-addr $NET.11:2377 --dispatcher-heartbeat $HB >/dev/null || return 1
  local tok; tok=$(dk 1 swarm join-token -q manager)
  for n in $(seq 2 $NH); do
    dk $n swarm join --token $tok --advertise-addr $NET.1$n --listen-addr $NET.1$n:2377 $NET.11:2377 >/dev/null || return 1
  done
}

nodes_json() { cio node ls --json 2>/dev/null; }
node_field() {  # node_field NAME FIELD: from `cio node ls --json`
  nodes_json | jq_ "(j.find(n => n.name === '$1') || {}).$2"
}
node_is() { [ "$(node_field $1 status)" = "$2" ]; }
all_normal() { [ "$(nodes_json | jq_ "j.filter(n => n.status === 'normal').length")" = $NH ]; }

up() {
  local t0=$SECONDS
  mkdir -p $L $SHARE/acks $RES
  log "lab: $NH hosts ${PFX}-h1..$NH on $NET.11-1$NH, etcd on $ETCD_IP, files in $L"
  $NODE $DIST/test/e2e/swarm-tool.js pki $L/pki $PFX etcd=$ETCD_IP,127.0.0.1 cli=127.0.0.1 \
    $(for n in $(seq 1 $NH); do echo $PFX-h$n=$NET.1$n; done) || return 1
  mkdir -p $L/cli
  cat > $L/cli/config.yaml <<EOF
cluster: $PFX
endpoints: [$(for n in $(seq 1 $NH); do printf 'https://%s:7411%s' $NET.1$n "$([ $n -lt $NH ] && echo ', ')"; done)]
ca: $L/pki/ca.crt
cert: $L/pki/cli.crt
key: $L/pki/cli.key
EOF
  net_up || return 1
  etcd_up || return 1
  for n in $(seq 1 $NH); do ns_up $n || return 1; write_ciod_config $n; done
  for n in $(seq 1 $NH); do start_ciod $n || return 1; done   # one after another: roles follow host order
  local pids=() p; for n in $(seq 1 $NH); do start_dockerd $n & pids+=($!); done
  for p in "${pids[@]}"; do wait $p || return 1; done
  image_up || { log "image import failed"; return 1; }
  swarm_up || { log "swarm init/join failed"; return 1; }
  wait_for 60 all_normal || { log "cio nodes not all normal"; cio node ls >&2; return 1; }
  write_writer
  log "lab up in $((SECONDS - t0)) s"
}

kill_host_procs() {  # SIGKILL everything in host n's cgroups: dockerd, containerd, shims, containers, ciod, nbdfuse
  local p; for _ in 1 2 3 4 5 6 7 8 9 10; do p=$(host_pids $1); [ -z "$p" ] && return 0; kill -9 $p 2>/dev/null; sleep 0.2; done
}
freezer() { echo $2 > /sys/fs/cgroup/freezer/${PFX}h$1/freezer.state; }
freezer_state() { cat /sys/fs/cgroup/freezer/${PFX}h$1/freezer.state 2>/dev/null; }

# What ciod would undo itself at its next start, for a host that will not start again:
# the volume filesystems, loop devices and nbdfuse mounts left in the host's mount namespace.
host_mounts_down() {
  local n=$1 H=$L/h$1
  [ -e $L/ns/h$n.mnt ] && mountpoint -q $L/ns/h$n.mnt 2>/dev/null || return 0
  local d b
  for d in /sys/block/loop*; do   # first, while the nbdfuse mounts still give the files their paths (freed once unused)
    b=$(cat $d/loop/backing_file 2>/dev/null) || continue
    case $b in $H/*) losetup -d /dev/${d##*/} 2>/dev/null;; esac
  done
  hx $n sh -c "awk '\$5 ~ \"^$H/\" {print \$5}' /proc/self/mountinfo | sort -r | while read m; do umount -l \"\$m\" 2>/dev/null; done" 2>/dev/null
  true
}

ns_down() {  # power off: drop the host's mount/uts namespaces (its mounts go with them) and cgroups
  local n=$1
  host_mounts_down $n
  umount $L/ns/h$n.mnt $L/ns/h$n.uts 2>/dev/null; rm -f $L/ns/h$n.mnt $L/ns/h$n.uts
  local d; for d in /sys/fs/cgroup/*/${PFX}h$n; do
    [ -d $d ] && find $d -depth -type d -exec rmdir {} + 2>/dev/null
  done; true
}

# Loop devices bound to our nbdfuse files whose FUSE mount is gone show the file as "/nbd";
# ours are told apart by the attachment records our agents keep.
sweep_our_loops() {
  local f dev b
  for f in $L/h*/ciod/plugin/attach/*.json; do
    [ -f "$f" ] || continue
    dev=$(jq_ 'j.loop ? j.loop.device : ""' < $f 2>/dev/null); [ -n "$dev" ] || continue
    b=$(cat /sys/block/${dev#/dev/}/loop/backing_file 2>/dev/null) || continue
    [ "$b" = /nbd ] || case $b in $L/*) ;; *) continue;; esac
    losetup -d $dev 2>/dev/null && log "freed $dev ($b)"
  done
  true
}

down() {  # down [wipe]: wipe deletes the lab's files even with E2E_KEEP=1
  local n p alive keep=${E2E_KEEP:-0}; [ "${1:-}" = wipe ] && keep=0
  for n in $(seq 1 $NH); do
    [ "$(freezer_state $n)" = FROZEN ] || [ "$(freezer_state $n)" = FREEZING ] && freezer $n THAWED
    [ -e /run/netns/$PFX-h$n ] && ip -n $PFX-h$n link set eth0 up 2>/dev/null
    for p in $(host_pids $n); do [ "$(cat /proc/$p/comm 2>/dev/null)" = dockerd ] && kill -TERM $p; done   # graceful first
  done
  for _ in $(seq 1 100); do   # up to 20 s for the dockerds (only pids in our cgroups are signalled)
    alive=0; for n in $(seq 1 $NH); do for p in $(host_pids $n); do [ "$(cat /proc/$p/comm 2>/dev/null)" = dockerd ] && alive=1; done; done
    [ $alive = 0 ] && break; sleep 0.2; done
  for n in $(seq 1 $NH); do   # ciod: its stop unmounts what Docker left mounted
    for p in $(host_pids $n); do grep -qa "$L/h$n/ciod.yaml" /proc/$p/cmdline 2>/dev/null && kill -TERM $p; done
  done
  for _ in $(seq 1 60); do
    alive=0; for n in $(seq 1 $NH); do for p in $(host_pids $n); do grep -qa "$L/h$n/ciod.yaml" /proc/$p/cmdline 2>/dev/null && alive=1; done; done
    [ $alive = 0 ] && break; sleep 0.2; done
  for n in $(seq 1 $NH); do kill_host_procs $n; ns_down $n; done
  sweep_our_loops
  if [ -f $L/etcd.pid ]; then
    p=$(cat $L/etcd.pid)
    grep -qa "$L/etcd" /proc/$p/cmdline 2>/dev/null && { kill -TERM $p; for _ in $(seq 1 25); do [ -d /proc/$p ] || break; sleep 0.2; done; kill -9 $p 2>/dev/null; }
    rm -f $L/etcd.pid
  fi
  mountpoint -q $L/ns 2>/dev/null && umount $L/ns
  for ns in $(seq -f $PFX-h%g 1 $NH) $PFX-net; do [ -e /run/netns/$ns ] && ip netns del $ns 2>/dev/null; done
  if [ "$keep" != 1 ] && [ -d $L ]; then
    # never delete through a mount that is still there
    if awk -v p="$L/" 'index($5, p) == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then log "mounts left under $L; not deleting it"
    else rm -rf $L; fi
  fi
  true
}

status() {
  for n in $(seq 1 $NH); do
    echo "== $PFX-h$n: $(host_pids $n | wc -l) procs, freezer=$(freezer_state $n), cpu=$(( $(cat /sys/fs/cgroup/cpuacct/${PFX}h$n/cpuacct.usage 2>/dev/null || echo 0) / 1000000 )) ms"
  done
  for n in $(seq 1 $NH); do dk $n node ls 2>/dev/null && break; done
  cio node ls
}

# ------------------------------------------------------------ scenarios ---------

write_writer() {
  mkdir -p $SHARE/acks
  # busybox sh, from the service's environment: ACKS (dir), STUBBORN (1: ignore SIGTERM, and
  # go on writing after a failed append or fsync, as an application ignoring fsync errors would).
  cat > $SHARE/writer.sh <<'EOF'
h=$(hostname); c=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n'); failed=0
[ "${STUBBORN:-0}" = 1 ] || trap 'echo "writer $h-$c: stopped after record $n"; exit 0' TERM
touch /data/log || { echo "writer $h-$c: cannot open /data/log"; exit 1; }
n=$(awk '/^R [^ ]+ [0-9a-f]+ [0-9]+$/ { if ($4 + 0 > m) m = $4 + 0 } END { print m + 0 }' /data/log)
echo "writer $h-$c: starts after record $n"
mkdir -p "$ACKS"
fault() {
  failed=$((failed + 1)); echo "writer $h-$c: $1 of record $n failed ($failed failures)"
  [ "${STUBBORN:-0}" = 1 ] || exit 1
  usleep 100000
}
while :; do
  n=$((n + 1))
  echo "R $h $c $n" >> /data/log || { fault append; continue; }
  sync /data/log || { fault fsync; continue; }
  echo $n >> "$ACKS/$h-$c"
done
EOF
}

leader_host() {  # number of the Swarm leader, asked of any host that answers
  local n l
  for n in $(seq 1 $NH); do
    l=$(dk $n node ls --format '{{.Hostname}} {{.ManagerStatus}}' 2>/dev/null | awk '$2=="Leader"{print $1}')
    [ -n "$l" ] && { echo ${l##*-h}; return 0; }
  done
  return 1
}

task_host() {  # task_host MANAGER SERVICE: number of the host running its task
  local h; h=$(dk $1 service ps $2 --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' 2>/dev/null | awk '$2=="Running"{print $1; exit}')
  [ -n "$h" ] && echo ${h##*-h}
}

# when FILE was created (an ack file: the writer's first acknowledgement), else now
born() { local b; b=$(stat -c %.9W "$1" 2>/dev/null); case $b in ''|0|0.*|-*) now;; *) echo $b;; esac; }
ack_count() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
# writers of a scenario (ack file names HOST-CID), in order of appearance
writers() { ls -tr $SHARE/acks/$1 2>/dev/null; }
new_writer() {  # new_writer SCN OLD: a writer other than OLD that has acknowledged a record
  local w; for w in $(writers $1); do [ "$w" != "$2" ] && [ -s $SHARE/acks/$1/$w ] && { echo $w; return 0; }; done; return 1
}

create_writer_service() {  # SVC VOL SCN AVOID_HOST STUBBORN
  dk $MGR service create -d -q --name $1 --replicas 1 --no-resolve-image \
    --restart-condition any --restart-delay 0s --hostname '{{.Node.Hostname}}' \
    --constraint "node.hostname!=$PFX-h$4" --env ACKS=/e2e/acks/$3 --env STUBBORN=$5 \
    --mount type=volume,source=$2,target=/data,volume-driver=cio,volume-nocopy=true,volume-opt=capacity=1,volume-opt=level=3 \
    --mount type=bind,source=$SHARE,target=/e2e \
    $IMG sh /e2e/writer.sh >/dev/null
}

remove_service() {  # SVC: remove it and wait until no container of it runs anywhere
  dk $MGR service rm $1 >/dev/null 2>&1
  local n end=$((SECONDS + 30))
  while [ $SECONDS -lt $end ]; do
    local left=0
    for n in $(seq 1 $NH); do [ -n "$(dk $n ps -q --filter label=com.docker.swarm.service.name=$1 2>/dev/null)" ] && left=1; done
    [ $left = 0 ] && return 0; sleep 0.5
  done
  log "containers of $1 still running 30 s after service rm"
}

# read_data SCN HOST VOL: acks first, then the data (so every ack copied must be in the data copied)
read_data() {
  rm -rf $RES/$1; mkdir -p $RES/$1
  cp -r $SHARE/acks/$1 $RES/$1/acks
  hx $2 mountpoint -q $L/h$2/mnt/$3 || { log "$L/h$2/mnt/$3 is not a mount on $PFX-h$2: the writer did not write to a cio volume"; return 1; }
  hx $2 cat $L/h$2/mnt/$3/log > $RES/$1/data 2>$RES/$1/data.err || { log "cannot read $3 on $PFX-h$2: $(cat $RES/$1/data.err)"; return 1; }
}

check() {  # SCN [--fenced W:MAX]: JSON result of swarm-tool check
  $NODE $DIST/test/e2e/swarm-tool.js check --data $RES/$1/data --acks $RES/$1/acks "${@:2}" | tee $RES/$1/check.json
}

# timeline LOG VOL T0: from the new owner's ciod log, when it took the volume over and mounted it, and
# how many of Docker's Mount calls it refused before (the old owner's lease had not expired yet)
timeline() {
  $NODE -e '
    const [file, vol, t0] = process.argv.slice(1); const at = (t) => "+" + ((t - t0 * 1000) / 1000).toFixed(1) + " s";
    let owned, mounted, refused = 0;
    for (const line of require("fs").readFileSync(file, "utf8").split("\n")) {
      let j; try { j = JSON.parse(line); } catch { continue; }
      if (j.time < t0 * 1000) continue;
      if (j.msg === "plugin call refused" && j.endpoint === "/VolumeDriver.Mount" && String(j.err).includes(vol)) refused++;
      if (j.msg === "this node owns the volume now" && j.volume === vol && !owned) owned = j.time;
      if (j.msg === "volume mounted for docker" && j.volume === vol && !mounted) mounted = j.time;
    }
    console.log(`Mount refused ${refused}x while the old owner was alive, owner ${owned ? at(owned) : "?"}, mounted ${mounted ? at(mounted) : "?"}`);
  ' "$@" 2>/dev/null
}

revive() {  # a crashed host boots again: fresh namespaces, same ciod data dir (same NODE_ID), dockerd
  local n=$1
  ip -n $PFX-h$n link set eth0 up
  ns_down $n; ns_up $n || return 1
  start_ciod $n || return 1
  start_dockerd $n || return 1
}

scenario_failover() {  # crash | freeze | partition
  local scn=$1 svc=e2e-$1 vol=e2e-$1 T0 v lead w_old w_new newh snap=0 t_first
  SCN_FAILS=()
  log "=== scenario $scn"
  lead=$(leader_host) || { fail "$scn: no Swarm leader"; SUMMARY+=("SCENARIO $scn: FAILED (no Swarm leader)"); return; }
  MGR=$lead
  mkdir -p $SHARE/acks/$scn
  local stubborn=1; [ $scn = crash ] && stubborn=0   # freeze/partition: the old writer keeps writing until killed
  t_first=$(now)
  create_writer_service $svc $vol $scn $lead $stubborn || { fail "$scn: service create"; SUMMARY+=("SCENARIO $scn: FAILED (service create)"); return; }
  if ! wait_for 120 new_writer $scn none; then
    fail "$scn: no record acknowledged 120 s after service create"; dk $MGR service ps --no-trunc $svc >&2
    SUMMARY+=("SCENARIO $scn: FAILED (writer did not start)"); remove_service $svc; return
  fi
  w_old=$(new_writer $scn none)
  log "$scn: writer $w_old up $(awk -v a=$(born $SHARE/acks/$scn/$w_old) -v b=$t_first 'BEGIN{printf "%.1f", a-b}') s after service create (leader $PFX-h$lead); writing ${WRITE_SECS} s"
  sleep $WRITE_SECS
  v=$(task_host $MGR $svc)
  [ "$PFX-h$v" = "${w_old%-*}" ] || { fail "$scn: task on h$v but writer $w_old"; SUMMARY+=("SCENARIO $scn: FAILED (task placement)"); remove_service $svc; return; }
  local node_id; node_id=$(node_field $PFX-h$v id)
  log "$scn: $(ack_count $SHARE/acks/$scn/$w_old) records acknowledged; $scn of $PFX-h$v (NODE_ID $node_id)"
  T0=$(now)
  if [ $scn = crash ]; then
    ip -n $PFX-h$v link set eth0 down; kill_host_procs $v
  elif [ $scn = partition ]; then
    ip -n $PFX-h$v link set eth0 down    # the host runs on, cut off from etcd, the other hosts and the Swarm
  else
    freezer $v FROZEN
    local i; for i in $(seq 1 50); do [ "$(freezer_state $v)" = FROZEN ] && break; sleep 0.1; done
    # FREEZING that stays: the writer waits in fsync (uninterruptible) for the frozen nbdfuse, so it cannot run either
    log "$scn: freezer of h$v: $(freezer_state $v)"
    # the old writer is stopped now: what it acknowledged so far is all it may ever have in the data (+1 in flight)
    snap=$(tail -n1 $SHARE/acks/$scn/$w_old); sleep 1
    [ "$(tail -n1 $SHARE/acks/$scn/$w_old)" = "$snap" ] || log "$scn: WARNING the old writer still acknowledged records after the freeze"
    snap=$(tail -n1 $SHARE/acks/$scn/$w_old)
  fi
  if ! wait_for $FAILOVER_MAX new_writer $scn $w_old; then
    fail "$scn: no new writer within $FAILOVER_MAX s"; dk $MGR service ps --no-trunc $svc >&2
    SUMMARY+=("SCENARIO $scn: FAILED (no failover within $FAILOVER_MAX s)")
    [ $scn = freeze ] && freezer $v THAWED
    [ $scn = partition ] && ip -n $PFX-h$v link set eth0 up
    [ $scn = crash ] && revive $v
    remove_service $svc; return
  fi
  w_new=$(new_writer $scn $w_old); newh=${w_new%-*}; newh=${newh##*-h}
  # the moment of the new writer's first acknowledgement: its ack file's birth (the polling above may lag behind)
  local failover; failover=$(awk -v a=$(born $SHARE/acks/$scn/$w_new) -v b=$T0 'BEGIN{printf "%.1f", a-b}')
  log "$scn: writer $w_new acknowledged its first record $failover s after the $scn; on $PFX-h$newh: $(timeline $L/h$newh/ciod.log $vol $T0)"
  sleep 3
  if [ $scn = crash ]; then
    local t_rev; t_rev=$(now)
    if revive $v && wait_for 60 node_is $PFX-h$v normal; then
      local id2; id2=$(node_field $PFX-h$v id)
      log "crash: $PFX-h$v rebooted, normal in cio node ls $(since $t_rev) s after its restart, NODE_ID $id2"
      [ "$id2" = "$node_id" ] || fail "crash: $PFX-h$v came back with NODE_ID $id2, not $node_id"
    else
      fail "crash: $PFX-h$v not normal 60 s after its restart (status $(node_field $PFX-h$v status))"
    fi
  else
    local acked_before; acked_before=$(tail -n1 $SHARE/acks/$scn/$w_old)
    if [ $scn = freeze ]; then freezer $v THAWED; else ip -n $PFX-h$v link set eth0 up; fi
    log "$scn: $PFX-h$v $([ $scn = freeze ] && echo thawed || echo reconnected); waiting for Swarm to stop the old container"
    local end=$((SECONDS + 45))
    while [ $SECONDS -lt $end ] && [ -n "$(dk $v ps -q --filter label=com.docker.swarm.service.name=$svc 2>/dev/null)" ]; do sleep 0.5; done
    local oldc; oldc=$(dk $v ps -aq --filter label=com.docker.swarm.service.name=$svc 2>/dev/null | head -1)
    [ -n "$oldc" ] && log "$scn: old container's last words: $(dk $v logs --tail 1 $oldc 2>&1)"
    # freeze: its fsync in flight at the freeze may return after the thaw: fine if that record made it before
    # the takeover (the check finds it in the data); any later acknowledgement is a record lost
    [ $scn = freeze ] && log "freeze: old writer acknowledged $(( $(tail -n1 $SHARE/acks/$scn/$w_old) - snap )) records after the freeze (at most 1, the one in flight)"
    [ $scn = partition ] && log "partition: old writer acknowledged $(( acked_before - $(head -n1 $SHARE/acks/$scn/$w_new) + 1 )) records after the new writer's first, $(( $(tail -n1 $SHARE/acks/$scn/$w_old) - acked_before )) after the reconnection"
    wait_for 30 node_is $PFX-h$v normal && log "$scn: $PFX-h$v normal again in cio node ls" || fail "$scn: $PFX-h$v not normal 30 s after it came back (status $(node_field $PFX-h$v status))"
    sleep 1
  fi
  local cur; cur=$(task_host $MGR $svc)
  [ "$cur" = "$newh" ] || log "$scn: WARNING the task now runs on h$cur, the new writer was on h$newh"
  if ! read_data $scn $newh $vol; then
    fail "$scn: cannot read the volume on the new owner"; SUMMARY+=("SCENARIO $scn: FAILED (data unreadable)"); remove_service $svc; return
  fi
  # the old writer's records that may be in the data: freeze, up to the one in flight when it was frozen;
  # partition, those before the new writer's first (it starts after the last record it finds)
  local limit=$((snap + 1)); [ $scn = partition ] && limit=$(( $(head -n1 $SHARE/acks/$scn/$w_new) - 1 ))
  local fenced=(); [ $scn != crash ] && fenced=(--fenced "$w_old:$limit")
  local r; r=$(check $scn "${fenced[@]}")
  local records lost gaps leaked
  records=$(echo "$r" | jq_ j.records); lost=$(echo "$r" | jq_ j.lost); gaps=$(echo "$r" | jq_ j.gaps); leaked=$(echo "$r" | jq_ j.leaked)
  log "$scn: data on $PFX-h$newh: $(echo "$r" | jq_ 'j.dataRecords') records to seq $(echo "$r" | jq_ j.lastSeq), torn lines $(echo "$r" | jq_ j.torn), gaps $gaps, writers $(echo "$r" | jq_ 'Object.entries(j.writers).map(([k,w]) => k+":acked "+w.acked+" ("+w.first+"-"+w.last+"), in data "+w.inData).join("; ")')"
  log "$scn: cio volume $vol: $(cio volume info $vol --json 2>/dev/null | jq_ '"owner "+j.owner+", epoch "+j.epoch+", copies "+j.replicas.map(r => r.state).join(",")')"
  [ "$lost" = 0 ] || fail "$scn: $lost acknowledged records lost, e.g. $(echo "$r" | jq_ 'j.lostExamples.join(" ")')"
  [ "$gaps" = 0 ] || fail "$scn: $gaps gaps in the record sequence (fsynced records missing)"
  if [ $scn != crash ]; then
    log "$scn: records of the old writer $w_old past seq $limit in the new owner's data: $leaked"
    [ "$leaked" = 0 ] || fail "$scn: $leaked records written by the old writer after the takeover reached the data, e.g. $(echo "$r" | jq_ 'j.leakedExamples.join(" ")')"
  fi
  summary $scn "failover $failover s, records $records, lost $lost"
  remove_service $svc
}

scenario_stack() {
  local scn=stack lead t0
  SCN_FAILS=()
  log "=== scenario stack"
  lead=$(leader_host) || { fail "stack: no Swarm leader"; SUMMARY+=("SCENARIO stack: FAILED (no Swarm leader)"); return; }
  MGR=$lead
  mkdir -p $SHARE/acks/stack
  cat > $L/stack.yml <<EOF
version: "3.8"
services:
  db:
    image: $IMG
    hostname: "{{.Node.Hostname}}"
    command: ["sh", "/e2e/writer.sh"]
    environment: { ACKS: /e2e/acks/stack }
    volumes:
      - { type: volume, source: dbdata, target: /data, volume: { nocopy: true } }
      - { type: bind, source: $SHARE, target: /e2e }
    deploy:
      replicas: 1
      placement: { constraints: ["node.hostname != $PFX-h$lead"] }
      restart_policy: { condition: any, delay: 0s }
volumes:
  dbdata:
    driver: cio
    driver_opts: { profile: MYSQL, capacity: "1" }
EOF
  t0=$(now)
  dk $MGR stack deploy --resolve-image never -c $L/stack.yml $PFX >/dev/null || { fail "stack deploy"; SUMMARY+=("SCENARIO stack: FAILED (stack deploy)"); return; }
  if ! wait_for 120 new_writer stack none; then
    fail "stack: no record acknowledged 120 s after stack deploy"; dk $MGR service ps --no-trunc ${PFX}_db >&2
    SUMMARY+=("SCENARIO stack: FAILED (writer did not start)"); dk $MGR stack rm $PFX >/dev/null; return
  fi
  local deploy; deploy=$(awk -v a=$(born $SHARE/acks/stack/$(new_writer stack none)) -v b=$t0 'BEGIN{printf "%.1f", a-b}')
  local vol=${PFX}_dbdata info
  info=$(cio volume info $vol --json) || { fail "stack: cio volume info $vol"; SUMMARY+=("SCENARIO stack: FAILED (no cio volume $vol)"); dk $MGR stack rm $PFX >/dev/null; return; }
  local level profile size copies
  level=$(echo "$info" | jq_ j.level); profile=$(echo "$info" | jq_ j.profile); size=$(echo "$info" | jq_ j.sizeBytes); copies=$(echo "$info" | jq_ j.replicas.length)
  log "stack: volume $vol: level $level, profile $profile, $size bytes, $copies copies, $(echo "$info" | jq_ 'j.replicas.map(r => r.state).join(",")')"
  [ "$level" = 3 ] || fail "stack: volume $vol has level $level, not 3"
  [ "$profile" = MYSQL ] || fail "stack: volume $vol has profile $profile, not MYSQL"
  [ "$size" = $((1024 ** 3)) ] || fail "stack: volume $vol has $size bytes, not 1 GiB (capacity: 1)"
  sleep 2
  local w newh; w=$(new_writer stack none); newh=${w%-*}; newh=${newh##*-h}
  local r records lost
  if read_data stack $newh $vol; then
    r=$(check stack); records=$(echo "$r" | jq_ j.records); lost=$(echo "$r" | jq_ j.lost)
    [ "$lost" = 0 ] || fail "stack: $lost acknowledged records lost"
  else fail "stack: cannot read the volume"; fi
  summary stack "deploy $deploy s, records ${records:-?}, lost ${lost:-?}"
  dk $MGR stack rm $PFX >/dev/null
  remove_service ${PFX}_db
}

# ---------------------------------------------------------------- main ---------

main() {
  local cmd=${1:-all}
  case $cmd in
    up) preflight; down wipe; up; exit $? ;;
    down) down; exit 0 ;;
    status) status; exit 0 ;;
    dk|hx|cio) "$@"; exit $? ;;
  esac
  local scenarios=("$@"); [ ${#scenarios[@]} = 0 ] || [ "$cmd" = all ] && scenarios=(crash freeze partition stack)
  preflight
  local t0=$SECONDS
  [ "${E2E_NO_DOWN:-0}" = 1 ] || trap 'down' EXIT
  trap 'log "interrupted; tearing down"; exit 130' INT TERM
  down wipe   # leftovers of an earlier run with the same names
  if ! up; then
    log "lab did not come up; logs in $L/h*/ (kept: E2E_KEEP=1 to inspect)"
    echo "SCENARIO setup: FAILED"; exit 1
  fi
  local s
  for s in "${scenarios[@]}"; do
    case $s in
      crash|freeze|partition) scenario_failover $s ;;
      stack) scenario_stack ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
  log "scenarios done in $((SECONDS - t0)) s"
  if [ $FAILED != 0 ]; then   # the lab's files go with the teardown: keep the logs
    local keep=/tmp/$PFX-e2e-logs n; rm -rf $keep; mkdir -p $keep
    for n in $(seq 1 $NH); do cp $L/h$n/ciod.log $keep/h$n-ciod.log; cp $L/h$n/dockerd.log $keep/h$n-dockerd.log; done 2>/dev/null
    cp -r $RES $keep/ 2>/dev/null; cp $L/etcd.log $keep/ 2>/dev/null
    log "logs kept in $keep"
  fi
  printf '%s\n' "${SUMMARY[@]}"
  exit $FAILED
}

main "$@"
