"""Run several forward passes of one block in lockstep, pausing all of them before each target module.

Module-sequential calibration needs, for every target module, statistics over *all* calibration
batches of its input *as produced by the already-pruned modules before it in the same block*; then
the module is pruned before any batch computes with it. Running the whole calibration set as one
batch would hold every intermediate of every window at once (attention scores included); running the
block once per module would repeat the forward. Instead each batch's forward runs in its own
greenlet (a coroutine with its own stack, on the calling thread):

* a batch that reaches a not-yet-processed gate module reports its input (``on_arrival``) and
  switches back to the driver, which starts or resumes the next batch;
* once every batch has arrived, the driver runs ``on_gate(name)`` (e.g. prune that module) and
  resumes the batches one by one, which continue with the changed weights.

So each block is computed once per batch; what is held between gates is each batch's live tensors at
that point of the forward; the heap memory a batch frees is returned to the OS before the next batch
runs (:func:`~.memory.release_free_memory`), so these interleaved forwards do not fragment the heap
into resident holes. Greenlets rather than threads: one thread means one allocator arena and
one grad mode, and an exception simply propagates to the driver. Every batch must pass the gates in
the same order (deterministic control flow); a mismatch raises :class:`LockstepError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from greenlet import greenlet
from torch import nn

from .memory import release_free_memory

_DONE = ("done", None)


class LockstepError(RuntimeError):
    """The batches did not reach the same gates in the same order."""


def run_in_lockstep(
    calls: list[Callable[[], Any]],
    gates: Mapping[str, nn.Module],
    on_arrival: Callable[[int, str, nn.Module, torch.Tensor], bool | None],
    on_gate: Callable[[str], None],
) -> list[Any]:
    """Run every ``calls[i]()`` (a forward, without grad) with a pause before each module of ``gates``.

    Args:
        calls: one zero-argument forward per batch.
        gates: ``{name: module}``; each is a gate until ``on_gate(name)`` ran, then a plain module.
        on_arrival: ``(batch index, name, module, first positional input)`` when a batch reaches a gate;
            returning True means the gate needs no other batch (e.g. its statistics are shared with a
            gate already processed): ``on_gate`` runs at once and no batch pauses there.
        on_gate: ``(name)`` once every batch has arrived at that gate.
    Returns: the calls' results, in order. An exception in a call or callback propagates.
    """
    driver = greenlet.getcurrent()
    done: set[str] = set()
    results: list[Any] = [None] * len(calls)
    current = {"index": 0}

    def pre_hook_for(name: str):
        def pre_hook(module, args):
            if name in done:
                return
            if on_arrival(current["index"], name, module, args[0]):  # nothing to wait for
                on_gate(name)
                done.add(name)
                return
            driver.switch(("gate", name))

        return pre_hook

    def batch(i: int):
        results[i] = calls[i]()
        return _DONE

    handles = [m.register_forward_pre_hook(pre_hook_for(name)) for name, m in gates.items()]
    runners = [greenlet(lambda i=i: batch(i), parent=driver) for i in range(len(calls))]
    try:
        with torch.no_grad():
            _drive(runners, current, done, on_gate)
    finally:
        for handle in handles:
            handle.remove()
        for runner in runners:
            if not runner.dead:
                runner.throw()  # GreenletExit unwinds its forward; nothing of it is kept
    return results


def _drive(runners: list[greenlet], current: dict, done: set[str], on_gate) -> None:
    """Resume every batch until it pauses or ends; after each round, process the gate they reached."""
    while True:
        reached = []
        for i, runner in enumerate(runners):
            current["index"] = i
            reached.append(runner.switch())
            release_free_memory()  # what this batch freed would otherwise stay resident as holes
        if len(set(reached)) != 1:
            raise LockstepError(f"batches diverged: {sorted({f'{k}:{v}' for k, v in reached})}; "
                                "this block has data-dependent control flow; use sequential='block'")
        kind, name = reached[0]
        if kind == "done":
            return
        on_gate(name)
        done.add(name)
