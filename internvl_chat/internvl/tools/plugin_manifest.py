"""Generate or check a plugin's manifest (``internvl_plugin.json``): what importing the plugin registers.

The manifest lets the core list and look up a plugin's names without importing it (``internvl.registry``).
It is derived, never written by hand: this imports the core's registering modules, then the plugin, and records
every name the plugin added (with its registry aliases and the facts each registry records).

    python -m internvl.tools.plugin_manifest patches.neuro            # print it
    python -m internvl.tools.plugin_manifest patches.neuro --write    # write patches/neuro/internvl_plugin.json
    python -m internvl.tools.plugin_manifest patches.neuro --check    # exit 2 if the file differs
    python -m internvl.tools.plugin_manifest patches.pathology patches.neuro patches.brainfound --check

Several plugins are derived one after the other in one process (each one's names are those its own import
added); a plugin that another one imported on the way must be derived in a process of its own.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import sys

# the core modules whose import registers core names; imported first so that they are not the plugin's
CORE_REGISTERING_MODULES = ("internvl.model", "internvl.model.internvl_chat", "internvl.media", "internvl.evaluation",
                            "internvl.serve.viewers")


def derive_manifest(module: str) -> dict:
    """The manifest of ``module``: imports it, so call it where it is not imported yet (plugins already imported
    keep their names: several plugins can be derived one after the other in one process)."""
    os.environ["INTERNVL_NO_PLUGINS"] = "1"  # only what this module's import registers
    from internvl import registry

    if module in sys.modules:
        raise RuntimeError(f"{module!r} is already imported in this process; derive its manifest in a fresh one")
    for core in CORE_REGISTERING_MODULES:
        importlib.import_module(core)
    before, modules_before = registry.registry_snapshot(), set(sys.modules)
    importlib.import_module(module)
    after = registry.registry_snapshot()
    # a plugin whose import imports another plugin does not provide the other's names
    others: dict[str, set[str]] = {}
    for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP):
        if ep.value != module and ep.value in set(sys.modules) - modules_before:
            for what, table in (registry.read_manifest(ep.value) or {}).get("registries", {}).items():
                others.setdefault(what, set()).update(table)
    registries = {}
    for what, table in sorted(after.items()):
        added = {name: entry for name, entry in sorted(table.items())
                 if name not in before.get(what, {}) and name not in others.get(what, {})}
        if added:
            registries[what] = added
    return {"plugin": module, "generated_by": f"python -m internvl.tools.plugin_manifest {module} --write",
            "registries": registries}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", metavar="MODULE",
                        help="plugin module(s) (an entry point's value, e.g. patches.neuro)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write each manifest next to its plugin")
    mode.add_argument("--check", action="store_true", help="exit 2 unless every manifest is up to date")
    args = parser.parse_args(argv)
    from internvl.registry import manifest_path, read_manifest

    status = 0
    for module in args.modules:
        path = manifest_path(module)
        derived = derive_manifest(module)
        text = json.dumps(derived, indent=1, ensure_ascii=False) + "\n"
        if args.write:
            tmp = f"{path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
            print(f"wrote {path}")
        elif args.check:
            if read_manifest(module) != derived:
                print(f"error: {path}: the manifest of {module!r} does not match what importing it registers; "
                      f"run python -m internvl.tools.plugin_manifest {module} --write", file=sys.stderr)
                status = 2
            else:
                print(f"{path}: up to date")
        else:
            sys.stdout.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
