#!/bin/sh
# Installs ccc-etl's nightly job on one machine, as root: the user it runs as, its directories,
# its log file and metrics directory, the binary, a configuration with an absolute Parquet root,
# an environment file for the secrets, the cron file and the systemd units (enable one of the
# two). Run again, it changes nothing already there but the binary.
#
#   sudo deploy/setup.sh [--binary PATH] [--user NAME] [--prefix DIR]
#
#   --binary PATH  the ccc-etl to install (default: target/release/ccc-etl, or ccc-etl on PATH)
#   --user NAME    the system user the job runs as (default: ccc-etl; with --prefix, the user
#                  running setup.sh)
#   --prefix DIR   install under DIR instead of / (every path in the installed files follows),
#                  for a trial: no user is created (--user must exist) and root is not needed
#
# Afterwards: put the instances in /etc/ccc-etl/pipeline.toml, the credentials and DATABASE_URL
# in /etc/ccc-etl/env, run `ccc-etl --config /etc/ccc-etl/pipeline.toml check` as the user, then
# either keep /etc/cron.d/ccc-etl or remove it and `systemctl enable --now ccc-etl-nightly.timer`.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary=""
user=""
prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --prefix) prefix=${2%/}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$prefix" ]; then
  # A trial under a prefix never touches the system's users: the job's user must exist.
  [ -n "$user" ] || user=$(id -un)
  if ! id -u "$user" >/dev/null 2>&1; then
    echo "setup.sh: user $user does not exist (with --prefix no user is created; pass an existing --user)" >&2
    exit 2
  fi
  owner=$(id -un)
else
  [ -n "$user" ] || user=ccc-etl
  owner=root
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it creates a user and root-owned files), or try it under --prefix DIR" >&2
    exit 1
  fi
fi
# Changing a file's owner to another user needs root; a trial as that user needs no chown.
as_user() {
  if [ "$(id -u)" = 0 ]; then chown "$@"; fi
}
if [ -z "$binary" ]; then
  if [ -x "$here/../target/release/ccc-etl" ]; then
    binary="$here/../target/release/ccc-etl"
  elif command -v ccc-etl >/dev/null 2>&1; then
    binary=$(command -v ccc-etl)
  else
    echo "setup.sh: no binary: build it (cargo build --release --locked) or pass --binary" >&2
    exit 1
  fi
fi

bin_dir=$prefix/usr/local/bin
etc_dir=$prefix/etc/ccc-etl
data_dir=$prefix/var/lib/ccc-etl
log_dir=$prefix/var/log/ccc-etl
metrics_dir=$prefix/var/lib/node_exporter/textfile
cron_dir=$prefix/etc/cron.d
unit_dir=$prefix/etc/systemd/system

# The user: a system account with no login and no home of its own beyond the data directory.
if [ -z "$prefix" ] && ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$data_dir" --no-create-home \
    --shell /usr/sbin/nologin --comment "ccc-etl nightly job" "$user"
  echo "created user $user"
fi

# Directories: the job writes its data, its log and its metrics; it only reads its configuration.
group=$(id -gn "$user")
install -d -m 0755 "$bin_dir" "$cron_dir" "$unit_dir"
install -d -m 0750 "$etc_dir" && as_user "$owner:$group" "$etc_dir"
install -d -m 0750 "$data_dir" "$data_dir/warehouse" "$log_dir"
as_user "$user:$group" "$data_dir" "$data_dir/warehouse" "$log_dir"
install -d -m 0755 "$(dirname "$metrics_dir")"
if [ ! -d "$metrics_dir" ]; then
  install -d -m 0755 "$metrics_dir" && as_user "$user:$group" "$metrics_dir"
else
  # node_exporter's directory may exist already: the job needs to write its one file there.
  as_user ":$group" "$metrics_dir" && chmod g+w "$metrics_dir"
fi
touch "$log_dir/ccc-etl.log"
as_user "$user:$group" "$log_dir/ccc-etl.log"
chmod 0640 "$log_dir/ccc-etl.log"

install -m 0755 "$binary" "$bin_dir/ccc-etl"

# The installed files name the installed paths.
rewrite() {
  sed -e "s#/usr/local/bin/#$bin_dir/#g" \
      -e "s#/etc/ccc-etl/#$etc_dir/#g" \
      -e "s#/var/lib/node_exporter/textfile#$metrics_dir#g" \
      -e "s#/var/lib/ccc-etl#$data_dir#g" \
      -e "s#/var/log/ccc-etl/#$log_dir/#g" \
      -e "s#User=ccc-etl#User=$user#; s#Group=ccc-etl#Group=$user#" \
      -e "s#^\(30 2 \* \* \*\) ccc-etl #\1 $user #" "$1"
}

if [ ! -e "$etc_dir/pipeline.toml" ]; then
  # The shipped configuration with the root made absolute: cron and systemd start the job
  # elsewhere than the file's directory.
  sed -e "s#^root = \"warehouse\"  #root = \"$data_dir/warehouse\"  #" "$here/../pipeline.toml" \
    > "$etc_dir/pipeline.toml"
  as_user "$owner:$group" "$etc_dir/pipeline.toml"
  chmod 0640 "$etc_dir/pipeline.toml"
  echo "wrote $etc_dir/pipeline.toml: put your instances in [pipeline] instances"
fi
if [ ! -e "$etc_dir/env" ]; then
  install -m 0600 "$here/env.example" "$etc_dir/env" && as_user "$user:$group" "$etc_dir/env"
  echo "wrote $etc_dir/env (mode 0600): put the credentials and DATABASE_URL in it"
fi
rewrite "$here/cron/ccc-etl" > "$cron_dir/ccc-etl"
chmod 0644 "$cron_dir/ccc-etl"
for unit in ccc-etl-nightly.service ccc-etl-nightly.timer; do
  rewrite "$here/systemd/$unit" > "$unit_dir/$unit"
  chmod 0644 "$unit_dir/$unit"
done
echo "installed $bin_dir/ccc-etl, $cron_dir/ccc-etl and $unit_dir/ccc-etl-nightly.{service,timer}"
echo "next: edit $etc_dir/pipeline.toml and $etc_dir/env, then as $user:"
echo "  runuser -u $user -- sh -c 'set -a; . $etc_dir/env; set +a; $bin_dir/ccc-etl --config $etc_dir/pipeline.toml check'"
echo "cron runs the job at 02:30; to use systemd instead: rm $cron_dir/ccc-etl && systemctl daemon-reload && systemctl enable --now ccc-etl-nightly.timer"
