"""The batch registry: every batch a run hands to a provider, from before it exists.

Folder ``<checkpoint>/batches/``: a diskcache opened like the journal (no eviction, WAL,
every value in SQLite), key = the batch's intent marker, value = its record::

    {"marker", "seq", "provider", "model", "url", "custom_ids": [...], "fingerprints": [...],
     "lines", "bytes",
     "state": "intent" | "submitted" | "collected",
     "file_id", "batch_id", "status", "counts", "cancel_requested", "created_at"}

The window between ``batches.create`` and writing its id is closed by writing the
*intent* first: a record with a marker of its own (``<run token>-<seq>``) and the
custom_ids it will carry, committed before the input file is uploaded. The marker goes in
the batch's metadata. A run killed anywhere after that finds, on ``--resume``, a record
in state ``intent`` and looks its marker up in the provider's list of batches: found,
the batch is adopted (its id journaled); not found, it was never created and is created
now, under the same marker. So a batch is never created twice for one intent, and a
custom_id is in at most one batch that is not collected.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from turborun.journal import Journal

REGISTRY_DIR = "batches"
INTENT = "intent"
SUBMITTED = "submitted"
COLLECTED = "collected"
_RUN_KEY = "_run"  # {"token": ..., "next_seq": ...}


class Registry:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / REGISTRY_DIR
        self._journal = Journal(self.folder)
        run = self._journal.get(_RUN_KEY)
        if run is None:
            run = {"status": "registry", "token": secrets.token_hex(6), "next_seq": 0}
            self._journal.record_many([(_RUN_KEY, run)])
        self._run = run

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / REGISTRY_DIR / "cache.db").exists()

    def records(self) -> Iterator[dict[str, Any]]:
        """Every batch record, in the order written."""
        for key, record in self._journal.entries():
            if key != _RUN_KEY:
                yield record

    def active(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["state"] != COLLECTED]

    def new_intent(
        self,
        provider: str,
        model: str,
        url: str,
        custom_ids: list[str],
        size: int,
        fingerprints: list[str] | None = None,
    ) -> dict[str, Any]:
        """Write the intent of one batch (before its file is uploaded) and return it.
        ``fingerprints``: a prefix of each task's fingerprint, so a resume knows which
        tasks were edited since their batch went out."""
        seq = int(self._run["next_seq"])
        self._run = {**self._run, "next_seq": seq + 1}
        record = {
            "status": INTENT,  # Journal entries carry a status; ours mirrors the state
            "marker": f"turborun-{self._run['token']}-{seq}",
            "seq": seq,
            "provider": provider,
            "model": model,
            "url": url,
            "custom_ids": custom_ids,
            "fingerprints": fingerprints or [],
            "lines": len(custom_ids),
            "bytes": size,
            "state": INTENT,
            "file_id": None,
            "batch_id": None,
            "batch_status": None,
            "counts": None,
            "cancel_requested": False,
            "created_at": time.time(),
        }
        self._journal.record_many([(_RUN_KEY, self._run), (record["marker"], record)])
        return record

    def update(self, record: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """Commit ``changes`` to a record (one transaction) and return the new record."""
        record.update(changes)
        if "state" in changes:
            record["status"] = changes["state"]
        self._journal.record_many([(record["marker"], record)])
        return record

    def clear(self) -> None:
        self._journal.clear()
        self._run = {"status": "registry", "token": secrets.token_hex(6), "next_seq": 0}
        self._journal.record_many([(_RUN_KEY, self._run)])

    def close(self) -> None:
        self._journal.close()


def describe(folder: Path) -> list[str]:
    """One line per batch of the run in ``folder`` (for ``status``); [] without any."""
    if not Registry.exists(folder):
        return []
    registry = Registry(folder)
    try:
        lines = []
        for r in registry.records():
            counts = r.get("counts") or {}
            done = counts.get("completed")
            where = f"{r['provider']}/{r['model']}"
            state = r.get("batch_status") or r["state"]
            if r["state"] == COLLECTED:
                state = f"{state}, collected"
            progress = f", {done:,}/{r['lines']:,} done" if done is not None else ""
            lines.append(
                f"batch {r.get('batch_id') or '(not created yet)'} {where}: "
                f"{r['lines']:,} lines, {state}{progress}"
            )
        return lines
    finally:
        registry.close()
