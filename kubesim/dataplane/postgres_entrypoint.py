"""What the official postgres image's docker-entrypoint.sh does, for a PostgreSQL from the wheel.

Run as ``python postgres_entrypoint.py --bin DIR --pgdata DIR --listen IP --port N --socket-dir DIR
[--user NAME] [-- postgres options]`` with POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB/
POSTGRES_INITDB_ARGS/POSTGRES_HOST_AUTH_METHOD in the environment. As root it hands the data directory
to --user and drops to it (PostgreSQL refuses to run as root). initdb runs only when the data
directory holds no cluster yet; then it execs the server, which stays this process. stdlib only.

Unlike the official image, an initialisation cut short (the container killed before its database
existed) is not mistaken for a cluster on the next start: the whole init happens in a staging directory
inside the data directory and moves into place at the end, PG_VERSION last.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile

PR_SET_PDEATHSIG = 1
STAGING = ".kubesim-initdb"   # inside PGDATA, so moving out of it stays on one filesystem


def _drop_privileges(user: str, paths: list[str]) -> None:
    entry = pwd.getpwnam(user)
    for path in paths:
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    if sys.platform.startswith("linux"):  # a uid change clears the parent-death signal: ask again
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _initialise(bin_dir: str, pgdata: str) -> None:
    """Init in the staging directory, then move its entries into PGDATA, PG_VERSION last; a staging
    directory found on start is an init that was cut short: its leftovers go and the init starts over."""
    staging = os.path.join(pgdata, STAGING)
    if not os.path.exists(staging) and os.listdir(pgdata):
        sys.exit(f'initdb: error: directory "{pgdata}" exists but is not empty')
    if os.path.exists(staging):
        print("PostgreSQL init process was interrupted before it completed; initialising again", flush=True)
        for entry in os.listdir(pgdata):
            path = os.path.join(pgdata, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    _initdb(bin_dir, staging)
    entries = sorted(os.listdir(staging), key=lambda name: name == "PG_VERSION")
    for entry in entries:
        os.rename(os.path.join(staging, entry), os.path.join(pgdata, entry))
    os.rmdir(staging)


def _initdb(bin_dir: str, pgdata: str) -> None:
    user = os.environ.get("POSTGRES_USER") or "postgres"
    password = os.environ.get("POSTGRES_PASSWORD", "")
    auth = os.environ.get("POSTGRES_HOST_AUTH_METHOD") or "scram-sha-256"
    if not password and auth != "trust":
        sys.exit("Error: Database is uninitialized and superuser password is not specified.\n"
                 "       You must specify POSTGRES_PASSWORD to a non-empty value for the\n"
                 "       superuser. For example, \"-e POSTGRES_PASSWORD=password\" on \"docker run\".")
    with tempfile.NamedTemporaryFile("w", suffix=".pw") as pwfile:
        pwfile.write(password + "\n")
        pwfile.flush()
        subprocess.run([os.path.join(bin_dir, "initdb"), "-D", pgdata, "--username", user, "--pwfile",
                        pwfile.name, "--encoding", "UTF8", "--locale", "C", "--auth-local", "trust",
                        "--auth-host", auth, *os.environ.get("POSTGRES_INITDB_ARGS", "").split()],
                       check=True, stdout=sys.stdout, stderr=sys.stderr)
    with open(os.path.join(pgdata, "pg_hba.conf"), "a") as hba:
        hba.write(f"\n# like the official image: password login from any address\nhost all all all {auth}\n")
    database = os.environ.get("POSTGRES_DB") or user
    if database != "postgres":
        # single-user mode: the database exists before the server ever accepts a connection
        subprocess.run([os.path.join(bin_dir, "postgres"), "--single", "-D", pgdata, "-j", "postgres"],
                       input=f'CREATE DATABASE "{database}";\n'.encode(), check=True,
                       stdout=subprocess.DEVNULL, stderr=sys.stderr)
    print(f"PostgreSQL init process complete; database {database!r}, superuser {user!r}", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for option in ("--bin", "--pgdata", "--listen", "--port", "--socket-dir"):
        parser.add_argument(option, required=True)
    parser.add_argument("--user")
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # stopped while initialising: exit quietly, like a shell would
    args, server_options = parser.parse_known_args(argv)
    server_options = [o for o in server_options if o != "--"]
    os.makedirs(args.pgdata, exist_ok=True)
    if os.geteuid() == 0:
        _drop_privileges(args.user, [args.pgdata, args.socket_dir])
    os.chmod(args.pgdata, 0o700)
    if not os.path.exists(os.path.join(args.pgdata, "PG_VERSION")) or \
            os.path.exists(os.path.join(args.pgdata, STAGING)):
        _initialise(args.bin, args.pgdata)
    else:
        print("PostgreSQL Database directory appears to contain a database; Skipping initialization",
              flush=True)
    postgres = os.path.join(args.bin, "postgres")
    os.execv(postgres, [postgres, "-D", args.pgdata, "-c", f"listen_addresses={args.listen}",
                        "-p", args.port, "-k", args.socket_dir, *server_options])


if __name__ == "__main__":
    main(sys.argv[1:])
