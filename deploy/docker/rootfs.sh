#!/usr/bin/env bash
# Lays out the root filesystem of a FROM-scratch runtime image: the given programs and exactly the
# shared libraries they load (found with ldd, copied to the same paths), minimal /etc/passwd and
# /etc/group naming the unprivileged user, and empty directories for the user to own.
#
#   deploy/docker/rootfs.sh OUT PROGRAM...
#
# OUT/rootfs/  the libraries and /etc files, root-owned
# OUT/bin/     the programs (each image copies in only its own, to /usr/local/bin)
# OUT/data/    directories the image hands to the app user (COPY --chown): run/ (the Unix socket)
#              and log/ (the audit log)
# The Dockerfile's builder stage runs this on the binaries it built; scripts/build-test-images.sh
# runs it on this machine's binaries, so both images have the same layout.
set -euo pipefail

die() { printf 'rootfs.sh: %s\n' "$*" >&2; exit 1; }

(($# >= 2)) || die "usage: rootfs.sh OUT PROGRAM..."
out=$1
shift
command -v ldd >/dev/null 2>&1 || die "ldd not found (Debian package libc-bin)"

# The image's user; compose.yaml and the tests rely on this uid for the shared socket volume.
app_uid=10001
root=$out/rootfs

rm -rf -- "$out"
mkdir -p "$root/etc" "$out/bin" "$out/data/run" "$out/data/log"
chmod 0700 "$out/data/run" "$out/data/log"

copy_lib() {
    local lib=$1
    [[ -e $root$lib ]] && return 0
    mkdir -p "$root$(dirname "$lib")"
    # -L: the library's real contents under the name the loader asks for.
    cp -L -- "$lib" "$root$lib"
}

for program in "$@"; do
    [[ -x $program ]] || die "$program: not an executable file"
    install -m 0755 -- "$program" "$out/bin/$(basename "$program")"
    # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
    deps=$(ldd "$program" 2>&1) || {
        # A static program has nothing to copy.
        grep -q 'not a dynamic executable\|statically linked' <<<"$deps" && continue
        die "ldd $program failed: $deps"
    }
    if grep -q 'not found' <<<"$deps"; then
        die "$program needs libraries that are not installed: $(grep 'not found' <<<"$deps" | tr -s ' \t' ' ')"
    fi
    while read -r lib; do
        copy_lib "$lib"
    done < <(sed -nE 's/^[[:space:]]*([^[:space:]]+ => )?(\/[^[:space:]]+) \(0x[0-9a-f]+\)$/\2/p' <<<"$deps")
done

cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/nonexistent:/usr/sbin/nologin
app:x:$app_uid:$app_uid:mcp-local-provider:/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >"$root/etc/group" <<GROUP
root:x:0:
app:x:$app_uid:
nogroup:x:65534:
GROUP
# Name lookups as on Debian: /etc/hosts (written by the container engine), then DNS.
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

printf 'rootfs.sh: %s: %s\n' "$out" "$(find "$root" -type f | wc -l) files, $(du -sh "$root" | cut -f1)" >&2
