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

    def lookup(self, image: str) -> ImageEntry:
        return next(e for e in self.entries if e.matches(image))  # the built-in table ends with "*"
