"""When one process of a distributed job fails, every process of the job stops with its message.

Without this, the other ranks wait in their next collective (DDP's all-reduce, the
evaluation's gather) until the process group times out: 30 minutes in Detectron2's `launch`.
On one machine the launcher ends its other workers when one fails, but it cannot reach the
workers of the other machines. So the failing rank writes its message into the job's
rendezvous store (c10d's TCPStore, served by rank 0's process, which every rank already
talks to) and waits until every other rank has read it; each rank's watcher thread polls the
store, and the first rank of every other machine prints the message and exits with the
failing rank's exit code, which makes its own launcher end the rest of its machine.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch.distributed as dist
from detectron2.utils import comm

from ..errors import ReinD2Error
from ..utils.cli import EXIT_USER_ERROR

logger = logging.getLogger(__name__)

FAILURE_KEY = "rein_d2/failure"
FAILURE_COUNT_KEY = "rein_d2/failures"
READER_COUNT_KEY = "rein_d2/failure_readers"
POLL_SECONDS = 0.5
# How long a failing rank waits for the others to read its message before it exits anyway
# (a rank that died or hangs in C++ code never reads it).
READ_TIMEOUT_SECONDS = 60.0
# How long a rank that read another's failure waits for its launcher to end it before it
# exits by itself (launchers other than Detectron2's may not end the other workers).
EXIT_GRACE_SECONDS = 20.0
EXIT_BUG = 1


@dataclass(frozen=True)
class RankFailure:
    """What one rank tells the others about its error."""

    rank: int
    machine: int
    message: str
    exit_code: int

    @classmethod
    def of(cls, error: Exception) -> RankFailure:
        rank = comm.get_rank()
        machine = rank // comm.get_local_size()
        if isinstance(error, ReinD2Error):
            return cls(rank, machine, str(error), EXIT_USER_ERROR)
        return cls(rank, machine, f"{type(error).__name__}: {error} (the traceback is in rank {rank}'s output)",
                   EXIT_BUG)

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> RankFailure:
        return cls(**json.loads(data))

    def report(self) -> str:
        return (f"error: {self.message}\n(raised on rank {self.rank}, machine {self.machine}; "
                "every rank of the job has stopped)")


class FailureWatcher(threading.Thread):
    """Polls the store for another rank's failure; on one, this process reports it and exits."""

    def __init__(self, store: dist.Store) -> None:
        super().__init__(name="rein_d2-failure-watcher", daemon=True)
        self.store = store
        self.stopping = threading.Event()
        self.ending = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(POLL_SECONDS):
            try:
                if self.store.check([FAILURE_KEY]):
                    self.stop_this_process(RankFailure.decode(self.store.get(FAILURE_KEY)))
            except RuntimeError as err:  # DistStoreError is one
                if not self.ending.is_set():
                    logger.warning("lost contact with the job's rendezvous store (%s); if this rank stops "
                                   "making progress, another rank has died: look at its output", err)
                return

    def stop_this_process(self, failure: RankFailure) -> None:
        self.store.add(READER_COUNT_KEY, 1)
        machine = comm.get_rank() // comm.get_local_size()
        if machine != failure.machine and comm.get_local_rank() == 0:
            print(failure.report(), file=sys.stderr, flush=True)
        else:
            # The failing rank prints on its machine: let it (and the launcher) end this one.
            time.sleep(EXIT_GRACE_SECONDS)
        logging.shutdown()
        os._exit(failure.exit_code)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def announce_failure(store: dist.Store, failure: RankFailure) -> None:
    """Publish the first failure of the job and wait until the other ranks have read it."""
    try:
        if store.add(FAILURE_COUNT_KEY, 1) == 1:
            store.set(FAILURE_KEY, failure.encode())
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        world = comm.get_world_size()
        while (store.add(READER_COUNT_KEY, 0) + store.add(FAILURE_COUNT_KEY, 0) < world
               and time.monotonic() < deadline):
            time.sleep(POLL_SECONDS)
    except RuntimeError as err:  # DistStoreError is one
        logger.warning("could not tell the other ranks about this rank's error (%s): they stop when "
                       "the process group times out", err)


@contextlib.contextmanager
def every_rank_stops_on_error() -> Iterator[None]:
    """Run the body of a distributed worker; an error in it stops every rank of the job.

    The error still propagates in the failing rank (for its usual message or traceback). A
    single process runs the body unchanged.
    """
    if comm.get_world_size() == 1:
        yield
        return
    store = dist.distributed_c10d._get_default_store()
    watcher = FailureWatcher(store)
    watcher.start()
    try:
        yield
    except Exception as error:
        watcher.stop()
        announce_failure(store, RankFailure.of(error))
        raise
    # Rank 0 serves the store: the others may find it gone once it has passed this barrier.
    watcher.ending.set()
    comm.synchronize()
    watcher.stop()
