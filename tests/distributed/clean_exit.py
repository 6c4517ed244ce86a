"""Leave a torchrun worker without interpreter teardown.

With torch 2.13 on CPU/gloo, a rank sometimes aborts with "terminate called without an active
exception" while the interpreter finalizes, after its work is done and written (about one run in
ten on a loaded 2-core machine; no Python frame is on the stack). The workers therefore flush, tear
the process group down together and leave with ``os._exit``. An exception in the work itself still
propagates with its traceback and a non-zero exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch.distributed as dist


def run_and_exit(main: Callable[..., Any], *args: Any) -> None:
    main(*args)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
