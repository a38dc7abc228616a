"""The image table (images.yaml plus the user's file): which local program stands in for an image."""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

import yaml

BUILTIN_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images.yaml")


@dataclass(frozen=True)
class ImageEntry:
    patterns: tuple[str, ...]
    run: str                                   # command | postgres | responder | sandbox
    table_dir: str
    command: tuple[str, ...] = ()
    cwd: str | None = None
    default_port: int | None = None
    pgdata: str | None = None
    stop_signal: str = "SIGTERM"
    exec: dict = field(default_factory=dict)
    exec_env: dict = field(default_factory=dict)
    # sandbox: a container of this image that gives a `command` runs it in the sandbox (run: sandbox always
    # does), with these host directories visible read-only and put first on PATH
    sandbox_command: bool = False
    sandbox_ro: tuple[str, ...] = ()
    sandbox_path: tuple[str, ...] = ()

    def matches(self, image: str) -> bool:
        return any(fnmatch.fnmatchcase(image, p) for p in self.patterns)


def load_table(path: str) -> list[ImageEntry]:
    with open(path) as f:
        document = yaml.safe_load(f) or {}
    table_dir = os.path.dirname(os.path.abspath(path))
    return [ImageEntry(patterns=tuple(e.pop("patterns")), command=tuple(e.pop("command", ())),
                       sandbox_ro=tuple(e.pop("sandbox_ro", ())), sandbox_path=tuple(e.pop("sandbox_path", ())),
                       table_dir=table_dir, **e) for e in document.get("images", [])]


class ImageTable:
    def __init__(self, extra_file: str | None = None):
        self.entries = (load_table(extra_file) if extra_file else []) + load_table(BUILTIN_TABLE)

    def find(self, image: str) -> ImageEntry | None:
        return next((e for e in self.entries if e.matches(image)), None)

    def lookup(self, image: str) -> ImageEntry:
        """The entry that runs ``image``; LookupError (not_runnable's message) when there is none."""
        entry = self.find(image)
        if entry is None:
            raise LookupError(self.not_runnable(image))
        return entry

    def not_runnable(self, image: str) -> str | None:
        """None when ``image`` runs here, else why not and what does: the pull failure its pod reports."""
        if self.find(image) is not None:
            return None
        return (f'image "{image}" is not runnable on kubesim: no entry of its image table matches it (runnable here: '
                f'{", ".join(self.runnable_names())}; add an entry with `python -m kubesim up --images FILE`)')

    def runnable_names(self) -> list[str]:
        """The image names the table's patterns stand for (``*/busybox:*`` -> busybox), in table order."""
        names = []
        for entry in self.entries:
            for pattern in entry.patterns:
                name = pattern.removeprefix("*/").split("@")[0].removesuffix(":*").removesuffix("*")
                if name and "*" not in name and name not in names:
                    names.append(name)
        return names
