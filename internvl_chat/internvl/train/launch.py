"""``torchrun`` for the finetune, with the error policy: ``python -m internvl.train.launch [torchrun args]``.

It runs ``torch.distributed.run`` unchanged (same arguments, same elastic agent) with one difference in how a
failure reaches the user. The workers run under ``internvl.errors.run_cli`` with ``$INTERNVL_ERROR_FILE`` set: an
expected failure (bad data, checkpoint, config or flag) on any rank writes its one ``error: ...`` line there and
the rank exits with status 2. The agent then stops the other ranks and this launcher prints that line once and
exits 2, instead of the agent's ``ChildFailedError`` report. Any other failure is a bug: the agent's full report
(each failed rank, its exit code or signal, its traceback) is printed as torchrun would.

``shell/common.sh`` uses it for more than one process; one process runs the entry point directly (no
process group, no DDP wrapper).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

from internvl.errors import EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    fd, error_file = tempfile.mkstemp(prefix="internvl-error-", suffix=".txt")
    os.close(fd)
    os.remove(error_file)  # the first failing rank creates it (O_EXCL)
    os.environ["INTERNVL_ERROR_FILE"] = error_file
    for name in ("torch.distributed.elastic", "torch.distributed.elastic.multiprocessing.api",
                 "torch.distributed.elastic.agent.server.api"):  # their failure logs would repeat the report
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        if os.path.exists(error_file):
            with open(error_file, encoding="utf-8") as fh:
                sys.stderr.write(fh.read())
            return EXIT_BAD_INPUT
        print(exc.format_msg(), file=sys.stderr)
        return 1
    finally:
        if os.path.exists(error_file):
            os.remove(error_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
