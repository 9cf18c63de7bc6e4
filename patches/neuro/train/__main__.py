"""``python -m patches.neuro.train -c CONFIG.yaml``: exit 0 done, 2 bad config or data (one ``error:`` line naming
the file and key), 1 an unexpected failure (traceback)."""
from __future__ import annotations

import argparse
import logging
import sys

from patches.neuro.encoders.pretrained import PretrainedLoadError
from patches.neuro.train.checkpoint import CheckpointError
from patches.neuro.train.config import load_config
from patches.neuro.train.data import DataError
from patches.neuro.train.schema import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m patches.neuro.train",
                                description="NeuroVFM-style JEPA pretraining / study classification from a YAML config")
    p.add_argument("-c", "--config", required=True, help="YAML config (see shell/neuro/config/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        cfg = load_config(args.config)
        from patches.neuro.train.loop import run  # heavy imports after the config is known to be good

        return run(cfg)
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
    except (DataError, CheckpointError, PretrainedLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
