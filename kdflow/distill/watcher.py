"""The student's epochs, as the distill step reports them while Ray Train runs."""

from __future__ import annotations

import threading

from kdflow import progress
from kdflow.data import storage
from kdflow.errors import KdflowError


class EpochWatcher(threading.Thread):
    """Reports the student's epochs as Ray Train records their checkpoints.

    The epochs run in Ray Train workers; the controller's checkpoint snapshot in the run
    folder is where the driver sees them without reaching into the training loop. An
    in-process run (`workers=0`) has no controller: its own checkpoint pointer says the same.
    """

    def __init__(self, run_dir: str, epochs: int, every_s: float = 1.0) -> None:
        from kdflow.distill.checkpoints import IN_PROCESS_LATEST

        super().__init__(name="kdflow-epoch-watcher", daemon=True)
        self.snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
        self.pointer = storage.join(run_dir, IN_PROCESS_LATEST)
        self.epochs, self.every_s = epochs, every_s
        self.done = threading.Event()
        self.seen = 0

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.poll()
        self.poll()

    def poll(self) -> None:
        try:
            if storage.exists(self.snapshot):
                latest = storage.read_json(self.snapshot).get("latest_checkpoint_result") or {}
            elif storage.exists(self.pointer):
                latest = storage.read_json(self.pointer)
            else:
                return
        except (KdflowError, ValueError):  # caught mid-write: the next poll reads it whole
            return
        metrics = latest.get("metrics") or {}
        epoch = int(metrics.get("epoch", 0))
        if epoch > self.seen:
            self.seen = epoch
            acc = metrics.get("student/val_accuracy")
            info = "" if acc is None else f"student val acc {float(acc):.3f}"
            progress.emit("distill epochs", epoch, self.epochs, info)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
