"""Name registries and plugin discovery: how the core finds what plugins add.

The core never imports a plugin by name. A plugin (a module under ``patches/`` or any out-of-tree package)
registers its pieces with the decorators below when it is imported; the core imports plugins through:

* the ``internvl.plugins`` entry-point group (``setup.py`` declares the ones shipped in ``patches/``),
* the ``INTERNVL_PLUGINS`` environment variable (comma-separated module paths),
* ``load_plugins(["my.module"])`` (what ``--plugins`` flags call).

Set ``INTERNVL_NO_PLUGINS=1`` to keep entry points from loading (the core then runs on its own registrations).
A plugin that fails to import raises: a broken plugin is never skipped silently.
"""
from __future__ import annotations

import fnmatch
import importlib
import logging
import os
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable

from internvl.errors import InputError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "internvl.plugins"


class UnknownNameError(InputError, KeyError):
    """A name no registry holds (an encoder, projector, media kind or task given by a flag, config or row)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])
_loaded_modules: set[str] = set()
_entry_points_done = False


class Registry:
    """A name -> object table for one family of pluggable things (encoders, projectors, media kinds, tasks)."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, aliases: Iterable[str] = ()) -> Any:
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")`` too. Duplicates raise."""

        def _add(o: Any) -> Any:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise ValueError(f"{self.what} {key!r} is already registered")
            self._items[name] = o
            for alias in aliases:
                self._aliases[alias] = name
            return o

        return _add if obj is None else _add(obj)

    def resolve(self, name: str) -> str:
        return self._aliases.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self._items

    def get(self, name: str) -> Any:
        """Look ``name`` up, importing plugins first if it is not known yet."""
        if name not in self:
            load_plugins()
        if name not in self:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownNameError(f"unknown {self.what} {name!r}; registered: {known}. "
                           f"Is the plugin that provides it installed (pip install -e .) or passed with --plugins?")
        return self._items[self.resolve(name)]

    def names(self, pattern: str = "*") -> list[str]:
        load_plugins()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def items(self) -> list[tuple[str, Any]]:
        load_plugins()
        return sorted(self._items.items())


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import plugin modules: the given ones, ``$INTERNVL_PLUGINS``, and (once) the entry-point group.

    Returns the module names imported by this call. Import errors propagate with the plugin named.
    """
    global _entry_points_done
    wanted = [m.strip() for m in modules if m and m.strip()]
    wanted += [m.strip() for m in os.environ.get("INTERNVL_PLUGINS", "").split(",") if m.strip()]
    if not _entry_points_done and os.environ.get("INTERNVL_NO_PLUGINS", "") not in ("1", "true", "yes"):
        _entry_points_done = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            wanted.append(ep.value)
    done = []
    for mod in wanted:
        if mod in _loaded_modules:
            continue
        _loaded_modules.add(mod)
        try:
            importlib.import_module(mod)
        except Exception as exc:  # re-raised with the plugin named: never skipped silently
            _loaded_modules.discard(mod)
            raise ImportError(f"internvl plugin {mod!r} failed to import: {exc}") from exc
        logger.info("loaded internvl plugin %s", mod)
        done.append(mod)
    return done


def add_plugins_argument(parser) -> None:
    """Give an argparse parser the shared ``--plugins`` option."""
    parser.add_argument("--plugins", action="append", default=[], metavar="MODULE",
                        help="import this module (out-of-tree plugin) before anything is looked up; repeatable")


def import_from_args(args) -> None:
    load_plugins(getattr(args, "plugins", []) or [])


def make_decorator(registry: Registry) -> Callable[..., Any]:
    def register(name: str, *, aliases: Iterable[str] = ()):
        return registry.register(name, aliases=aliases)

    register.__doc__ = f"Decorator: register a {registry.what} under ``name``."
    return register
