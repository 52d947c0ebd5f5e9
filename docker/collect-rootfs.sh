#!/usr/bin/env bash
# docker/collect-rootfs.sh ROOT BINARY...: a minimal runtime tree in ROOT
# for the given (already copied) binaries: every shared library they load
# (ldd, symlinks kept), the dynamic loader, the CA bundle, passwd/group with
# the nonroot user 65532, /tmp, and the dpkg status record of each package
# those files come from (so scanners can list them, as distroless does).
# runs in the build stage of the Dockerfile.
set -euo pipefail
root=$1
shift
files=()
for b in "$@"; do
  while read -r lib; do
    files+=("$lib")
  done < <(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
# a library path and what it resolves to (/lib is a symlink to usr/lib on
# debian 12)
copy() {
  local f=$1 real
  real=$(readlink -f "$f")
  mkdir -p "$root$(dirname "$real")"
  cp -a "$real" "$root$real"
  if [ "$f" != "$real" ] && [ ! -e "$root$f" ]; then
    mkdir -p "$root$(dirname "$f")"
    ln -s "$real" "$root$f"
  fi
}
for f in $(printf '%s\n' "${files[@]}" | sort -u); do
  case "$f" in
    /lib/* | /lib64/*) f=/usr$f ;; # merged /usr
  esac
  copy "$f"
done
# the loader is looked up at its PT_INTERP path
ln -sfn usr/lib "$root/lib"
[ -d "$root/usr/lib64" ] && ln -sfn usr/lib64 "$root/lib64"

mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/dpkg/status.d"
chmod 1777 "$root/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

# which package each copied library belongs to
pkgs=$(for f in $(cd "$root" && find usr -type f); do dpkg -S "/$f" 2>/dev/null || dpkg -S "$(echo "/$f" | sed 's#^/usr##')" 2>/dev/null || true; done |
  cut -d: -f1 | sort -u)
for p in $pkgs ca-certificates; do
  dpkg -s "$p" >"$root/var/lib/dpkg/status.d/${p%%:*}"
done
echo "collect-rootfs: $(printf '%s\n' "${files[@]}" | sort -u | wc -l) libraries from $(echo "$pkgs" | wc -w) packages, $(du -sh "$root" | cut -f1)"
