"""Which server-side files the web demo may open: paths under ``--data-root`` (after resolving ``..`` and
symbolic links) and the demo's own temporary folder (where Gradio stores uploads). Everything else is refused
with ``PathRefused`` naming the path; without ``--data-root`` only uploads can be opened."""
from __future__ import annotations

import os


class PathRefused(ValueError):
    """A path outside the allowed roots (or no root configured)."""


class AllowedPaths:
    def __init__(self, data_root: str | None, temp_dir: str):
        self.data_root = os.path.realpath(data_root) if data_root else None
        self.temp_dir = os.path.realpath(temp_dir)

    @staticmethod
    def _inside(path: str, root: str) -> bool:
        return os.path.commonpath([path, root]) == root

    def resolve(self, user_path: str) -> str:
        """The real path of ``user_path`` (relative paths are taken under the data root) or ``PathRefused``."""
        text = (user_path or "").strip()
        if not text:
            raise PathRefused("no path given")
        if "\x00" in text:
            raise PathRefused(f"{text!r}: not a valid path")
        if not os.path.isabs(text):
            if self.data_root is None:
                raise PathRefused(f"{text}: server paths are disabled; start the demo with --data-root DIR")
            text = os.path.join(self.data_root, text)
        real = os.path.realpath(text)
        roots = [r for r in (self.data_root, self.temp_dir) if r]
        if not any(self._inside(real, r) for r in roots):
            where = self.data_root or "(no --data-root given)"
            raise PathRefused(f"{user_path}: outside the allowed data root {where}; refused")
        if not os.path.exists(real):
            raise PathRefused(f"{user_path}: not found under the data root")
        return real
