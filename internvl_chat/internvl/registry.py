"""Name registries and plugin discovery: how the core finds what plugins add, importing a plugin only when needed.

The core never imports a plugin by name. A plugin (a module under ``patches/`` or any out-of-tree package)
registers its pieces with the decorators below when it is imported; the core finds plugins through:

* the ``internvl.plugins`` entry-point group (``setup.py`` declares the ones shipped in ``patches/``:
  ``neuro = patches.neuro``),
* the ``INTERNVL_PLUGINS`` environment variable (comma-separated module paths),
* ``load_plugins(["my.module"])`` (what ``--plugins`` flags call).

**Lazy plugins (manifests).** An entry-point plugin may ship a manifest, ``internvl_plugin.json``, in its package
folder (next to ``__init__.py``; for a one-file module ``<module>.internvl_plugin.json`` next to it). It is found
with ``importlib.util.find_spec`` and read as data, so the plugin is *not* imported to learn what it provides::

    {"plugin": "patches.neuro",
     "registries": {"vision model": {"brain3d_vit": {"aliases": []}, ...},
                    "media kind": {"volume": {"aliases": [], "option_names": [...], "placeholder": "<image>",
                                              "placeholder_aliases": []}, ...}, ...}}

``registries`` maps a registry (``Registry.what``) to the names the plugin registers there, each with its registry
aliases and the plain-data class attributes that registry lists in ``Registry(..., facts=...)`` (what the core
reads without building the object, e.g. a media kind's ``option_names``). With a manifest:

* ``registry.get(name)`` of a declared name imports that one plugin, then returns the object;
* ``name in registry``, ``registry.names()`` (error messages' ``known: ...``, listings) and
  ``registry.facts(attr)`` include declared names without importing anything;
* ``registry.items()`` (the objects themselves) imports the plugins that declare something in that registry;
* ``registry.get(name)`` of a name no manifest declares imports every plugin before it calls the name unknown (a
  plugin newer than its manifest still works, with a warning to regenerate the manifest).

So a plain image run imports no plugin at all (no diffusers from Brainfound). An entry-point plugin without a
manifest is imported the first time a registry is asked about a name it does not hold, or lists its names (the
behaviour before manifests). Modules given by ``--plugins``/``$INTERNVL_PLUGINS`` are imported at once.
Manifests are generated, not written by hand: ``python -m internvl.tools.plugin_manifest MODULE --write``;
``tests/core/test_plugin_manifests.py`` fails when one no longer matches what importing its plugin registers.

Set ``INTERNVL_NO_PLUGINS=1`` to keep entry points from loading (the core then runs on its own registrations).
A plugin that fails to import, or a manifest that cannot be read, raises: a broken plugin is never skipped.
"""
from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import logging
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

from internvl.errors import InputError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "internvl.plugins"
MANIFEST_NAME = "internvl_plugin.json"


class UnknownNameError(InputError, KeyError):
    """A name no registry holds (an encoder, projector, media kind or task given by a flag, config or row)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


_loaded_modules: set[str] = set()
_registries: list["Registry"] = []


class _Discovery:
    """What the entry-point plugins declare (read once, without importing them)."""

    def __init__(self) -> None:
        self.done = False
        self.declared: dict[str, dict[str, tuple[str, dict]]] = {}  # what -> name|alias -> (module, entry)
        self.undeclared: list[str] = []  # entry-point plugins without a manifest: imported on first need

    def run(self) -> None:
        if self.done:
            return
        self.done = True
        if os.environ.get("INTERNVL_NO_PLUGINS", "") in ("1", "true", "yes"):
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            manifest = read_manifest(ep.value)
            if manifest is None:
                self.undeclared.append(ep.value)
                continue
            for what, entries in manifest["registries"].items():
                table = self.declared.setdefault(what, {})
                for name, entry in entries.items():
                    for key in (name, *entry.get("aliases", ())):
                        table[key] = (ep.value, {**entry, "name": name})

    def provider(self, what: str, name: str) -> str | None:
        self.run()
        hit = self.declared.get(what, {}).get(name)
        return hit[0] if hit else None

    def entries(self, what: str) -> dict[str, dict]:
        """Declared canonical name -> manifest entry, for one registry."""
        self.run()
        return {e["name"]: e for e in (v[1] for v in self.declared.get(what, {}).values())}


_discovery = _Discovery()


def manifest_path(module: str) -> Path | None:
    """Where ``module``'s manifest would be (found without importing ``module``; its parent package is)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ImportError(f"internvl plugin {module!r} cannot be found: {exc}") from exc
    if spec is None:
        raise ImportError(f"internvl plugin {module!r} cannot be found (is it installed?)")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / MANIFEST_NAME
    if spec.origin:
        return Path(spec.origin).with_name(f"{module.rsplit('.', 1)[-1]}.{MANIFEST_NAME}")
    return None


def read_manifest(module: str) -> dict | None:
    """``module``'s manifest (see the module docstring), or None if it ships none. A broken one raises."""
    path = manifest_path(module)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("registries"), dict):
            raise ValueError("no 'registries' object")
    except (OSError, ValueError, AttributeError) as exc:
        raise ImportError(f"{path}: internvl plugin manifest of {module!r} is unreadable: {exc}") from exc
    return data


class Registry:
    """A name -> object table for one family of pluggable things (encoders, projectors, media kinds, tasks).

    ``facts``: class attributes of the registered objects that a plugin manifest records, so the core can read
    them (``facts(attr)``) for names whose plugin is not imported yet.
    """

    def __init__(self, what: str, *, facts: Iterable[str] = ()):
        self.what = what
        self.fact_names = tuple(facts)
        self._items: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}
        _registries.append(self)

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
        """The canonical name of ``name`` (an alias resolves; a declared, not yet imported alias too)."""
        if name in self._aliases or name in self._items:
            return self._aliases.get(name, name)
        entry = _discovery.declared.get(self.what, {}).get(name) if _discovery.done else None
        return entry[1]["name"] if entry else name

    def _registered(self, name: str) -> bool:
        return self._aliases.get(name, name) in self._items

    def _make_available(self, name: str) -> None:
        """Import what may provide ``name``: the plugin that declares it, else the plugins without manifests."""
        module = _discovery.provider(self.what, name)
        if module is not None:
            _import_plugin(module)
        else:
            _import_undeclared()

    def __contains__(self, name: str) -> bool:
        """Whether ``name`` is registered or declared by a plugin (without importing a declaring plugin)."""
        if self._registered(name):
            return True
        if _discovery.provider(self.what, name) is not None:
            return True
        _import_undeclared()
        return self._registered(name)

    def get(self, name: str) -> Any:
        """Look ``name`` up, importing the plugin that provides it if it is not imported yet."""
        if not self._registered(name):
            self._make_available(name)
        if not self._registered(name):
            _import_declared()  # before calling a name unknown, look in every plugin (a manifest may be stale)
            if self._registered(name):
                logger.warning("%s %r is registered by a plugin whose manifest does not declare it; regenerate the "
                               "manifests (python -m internvl.tools.plugin_manifest MODULE --write)", self.what, name)
        if not self._registered(name):
            module = _discovery.provider(self.what, name)
            stale = (f" The manifest of plugin {module!r} declares it, but importing the plugin did not register it "
                     f"(regenerate the manifest: python -m internvl.tools.plugin_manifest {module} --write)."
                     if module else "")
            known = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown {self.what} {name!r}; registered: {known}.{stale} "
                                   f"Is the plugin that provides it installed (pip install -e .) or passed with "
                                   f"--plugins?")
        return self._items[self._aliases.get(name, name)]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered and declared names (no plugin with a manifest is imported for this)."""
        _import_undeclared()
        every = set(self._items) | set(_discovery.entries(self.what))
        return sorted(n for n in every if fnmatch.fnmatch(n, pattern))

    def items(self) -> list[tuple[str, Any]]:
        """Every ``(name, object)``: imports the plugins that declare something in this registry."""
        _import_declared(self.what)
        return sorted(self._items.items())

    def facts(self, attr: str) -> dict[str, Any]:
        """``name -> obj.<attr>`` for every registered or declared name; declared ones come from the manifest
        (lists where the class has a tuple or set). ``attr`` must be one of this registry's ``facts``."""
        if attr not in self.fact_names:
            raise ValueError(f"{self.what} registry records no fact {attr!r} (it records {self.fact_names})")
        _import_undeclared()
        out = {name: entry[attr] for name, entry in _discovery.entries(self.what).items() if attr in entry}
        out.update({name: getattr(obj, attr) for name, obj in self._items.items()})
        return out


def fact_value(value: Any) -> Any:
    """How a fact is written in a manifest: sets sorted into lists, tuples as lists, the rest as is."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def registry_snapshot() -> dict[str, dict[str, dict]]:
    """Every registry's registered names, as manifest entries (aliases + facts); what a manifest is made of."""
    out: dict[str, dict[str, dict]] = {}
    for reg in _registries:
        table = out.setdefault(reg.what, {})
        for name, obj in reg._items.items():
            entry = {"aliases": sorted(a for a, n in reg._aliases.items() if n == name)}
            entry.update({attr: fact_value(getattr(obj, attr)) for attr in reg.fact_names})
            table[name] = entry
    return out


def _import_plugin(module: str) -> bool:
    """Import one plugin module (once); True if this call imported it. Import errors name the plugin."""
    if module in _loaded_modules:
        return False
    _loaded_modules.add(module)
    try:
        importlib.import_module(module)
    except Exception as exc:  # re-raised with the plugin named: never skipped silently
        _loaded_modules.discard(module)
        raise ImportError(f"internvl plugin {module!r} failed to import: {exc}") from exc
    logger.info("loaded internvl plugin %s", module)
    return True


def _env_plugins() -> list[str]:
    return [m.strip() for m in os.environ.get("INTERNVL_PLUGINS", "").split(",") if m.strip()]


def _import_undeclared() -> list[str]:
    """Import what must be imported to know its names: ``$INTERNVL_PLUGINS`` and entry points without manifest."""
    _discovery.run()
    return [m for m in _env_plugins() + _discovery.undeclared if _import_plugin(m)]


def _import_declared(what: str | None = None) -> None:
    """Import the manifest plugins that declare something in registry ``what`` (None: all of them)."""
    _import_undeclared()
    tables = _discovery.declared.values() if what is None else [_discovery.declared.get(what, {})]
    for module in sorted({entry[0] for table in tables for entry in table.values()}):
        _import_plugin(module)


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Make plugins available: import the given modules and ``$INTERNVL_PLUGINS`` now; read the entry-point
    plugins' manifests (their plugins are imported when a name they declare is looked up) and import the
    entry-point plugins that have none.

    Returns the module names imported by this call. Import errors propagate with the plugin named.
    """
    wanted = [m.strip() for m in modules if m and m.strip()]
    done = [m for m in dict.fromkeys(wanted) if _import_plugin(m)]
    return done + _import_undeclared()


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
