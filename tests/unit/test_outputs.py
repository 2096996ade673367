"""AtomicFile and the file group commit: small results in memory, big ones spilled to a hidden
temp file, nothing under the final name before commit, failures per file."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from orchestrator import outputs
from orchestrator.outputs import AtomicFile, FileCommitter, part_path


def test_small_result_stays_in_memory_until_commit(tmp_path: Path) -> None:
    final = tmp_path / "p" / "r.csv"
    sink = AtomicFile(final).open()
    sink.write_sync(b"a,b\n1,2\n")
    sink.write_sync(b"3,4")
    assert not sink.on_disk
    assert not final.parent.exists()  # not even the directory before commit
    sink.commit_sync()
    assert final.read_bytes() == b"a,b\n1,2\n3,4"
    assert not part_path(final).exists()
    assert sink.bytes == 11
    assert sink.csv_rows() == 2
    assert sink.sha256 == hashlib.sha256(b"a,b\n1,2\n3,4").hexdigest()


def test_big_result_spills_to_hidden_temp_file(tmp_path: Path) -> None:
    final = tmp_path / "r.bin"
    sink = AtomicFile(final, spill=10).open()
    sink.write_sync(b"x" * 8)
    assert not sink.on_disk
    sink.write_sync(b"y" * 8)
    assert sink.on_disk
    assert part_path(final).exists()
    assert not final.exists()
    sink.write_sync(b"z" * 4)
    sink.commit_sync()
    assert final.read_bytes() == b"x" * 8 + b"y" * 8 + b"z" * 4
    assert not part_path(final).exists()


def test_background_writeback_of_a_long_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "WRITEBACK_BYTES", 64)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    final = tmp_path / "big.bin"
    sink = AtomicFile(final, spill=16).open()
    chunks = [bytes([i]) * 50 for i in range(20)]
    for chunk in chunks:
        sink.write_sync(chunk)
    sink.commit_sync()
    assert synced, "no writeback was started while writing 1,000 bytes in 64-byte stretches"
    assert final.read_bytes() == b"".join(chunks)


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    for spill in (1 << 20, 4):
        final = tmp_path / f"r{spill}.csv"
        sink = AtomicFile(final, spill=spill).open()
        sink.write_sync(b"some,data\n")
        sink.abort()
        assert not final.exists()
        assert not part_path(final).exists()


def test_reopen_starts_over(tmp_path: Path) -> None:
    final = tmp_path / "r.txt"
    sink = AtomicFile(final, spill=4).open()
    sink.write_sync(b"first attempt")
    sink.open()  # a retry reuses the sink
    sink.write_sync(b"ok")
    sink.commit_sync()
    assert final.read_bytes() == b"ok"
    assert sink.bytes == 2


def test_group_commit_many_files_and_one_failure(tmp_path: Path) -> None:
    async def main() -> list[BaseException | None]:
        committer = FileCommitter()
        sinks = []
        for i in range(30):
            sink = AtomicFile(tmp_path / f"d{i % 3}" / f"r{i}.txt", spill=8 if i % 2 else 1 << 20)
            sink.open().write_sync(f"row {i}\n".encode() * 3)
            sinks.append(sink)
        # a file whose directory cannot be created: only it fails
        (tmp_path / "blocker").write_text("a file, not a directory")
        bad = AtomicFile(tmp_path / "blocker" / "r.txt").open()
        bad.write_sync(b"x")
        results = await asyncio.gather(
            *(s.commit(committer) for s in [*sinks, bad]), return_exceptions=True
        )
        committer.close()
        return list(results)

    results = asyncio.run(main())
    assert all(r is None for r in results[:-1])
    assert isinstance(results[-1], OSError)
    for i in range(30):
        assert (tmp_path / f"d{i % 3}" / f"r{i}.txt").read_bytes() == f"row {i}\n".encode() * 3
    leftovers = list(tmp_path.rglob(".*.part"))
    assert leftovers == []
