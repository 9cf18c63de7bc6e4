"""Web demo: chat with a checkpoint about an image, a whole-slide image or a volume, beside a viewer.

    python -m internvl.serve --model DIR [--model DIR2 ...] [--data-root DIR] [--host 127.0.0.1] [--port 7860]

Each ``--model`` answers for the media kinds its vision encoder reads (the first one for text-only questions);
viewers and readers of plugin kinds come from the installed plugins (``--plugins`` for out-of-tree ones).
Server-side paths are allowed only under ``--data-root``; uploads always work. Everything the demo writes
(uploads, rendered views, slide feature caches) goes into one temporary folder, removed at exit. It binds to
127.0.0.1 unless ``--host`` says otherwise. Bad arguments: one ``error:`` line, exit code 2.
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile


def build_parser() -> argparse.ArgumentParser:
    from internvl.registry import add_plugins_argument

    p = argparse.ArgumentParser(prog="python -m internvl.serve", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="InternVL checkpoint folder; repeat for models of other media kinds")
    p.add_argument("--data-root", default=None, help="server-side files may be opened only under this folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--media-option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option for every media read (as a meta-JSON entry key; VALUE parsed as JSON when "
                        "it is JSON), e.g. slide_mpp=0.5 or max_dynamic_patch=6")
    add_plugins_argument(p)
    return p


def parse_media_options(specs: list[str]) -> dict:
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise ValueError(f"--media-option {spec!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in args.model:
        if not os.path.isfile(os.path.join(path, "config.json")):
            print(f"error: {path}: not a checkpoint folder (no config.json)", file=sys.stderr)
            return 2
    if args.data_root and not os.path.isdir(args.data_root):
        print(f"error: {args.data_root}: --data-root is not a folder", file=sys.stderr)
        return 2
    try:
        media_options = parse_media_options(args.media_option)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("internvl").setLevel(logging.INFO)
    work_dir = tempfile.mkdtemp(prefix="internvl-serve-")
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = work_dir           # uploads and rendered views
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from internvl.registry import import_from_args
    from internvl.serve.app import build_app
    from internvl.serve.engine import ChatEngine
    from internvl.serve.paths import AllowedPaths

    import_from_args(args)
    engine = ChatEngine(args.model, work_dir, device=args.device, media_options=media_options,
                        max_new_tokens=args.max_new_tokens)
    demo = build_app(engine, AllowedPaths(args.data_root, work_dir))
    print(f"temporary folder: {work_dir}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True,
                        footer_links=["api"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
