#!/bin/sh
# Assembles the airlock image's root filesystem: the binary, the shared libraries it links
# (from the builder, by ldd), CA certificates for OIDC and webhooks over TLS, a non-root user
# for the CLI, and the directories the daemon mounts over. The Containerfile's runtime stage
# is `FROM scratch` plus this tree; tests/packaging.rs builds and runs the same tree here.
#
#   deploy/image/rootfs.sh BINARY DEST
set -eu
bin=$1
dest=$2
mkdir -p "$dest/usr/bin" "$dest/etc/airlock" "$dest/etc/ssl/certs" "$dest/var/lib/airlock" \
    "$dest/sys/fs/bpf" "$dest/host/sys/fs/cgroup" "$dest/host/proc" "$dest/tmp"
chmod 1777 "$dest/tmp"
install -m 0755 "$bin" "$dest/usr/bin/airlock"
# Shared libraries, at the paths the binary's loader looks for them.
ldd "$bin" | awk '/=> \// { print $3 } /^\s*\/.*ld-linux/ { print $1 }' | while read -r lib; do
    mkdir -p "$dest$(dirname "$lib")"
    cp -L "$lib" "$dest$lib"
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/ca-certificates.crt"
fi
# root for the daemon (it needs the host's bpffs and state directory), nonroot for the CLI.
cat >"$dest/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$dest/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
mkdir -p "$dest/root" "$dest/home/nonroot"
chown 65532:65532 "$dest/home/nonroot" 2>/dev/null || true
