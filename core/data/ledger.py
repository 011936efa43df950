"""Every byte a reader parses, hashed in the same pass (:class:`ReadLedger`)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections import OrderedDict

from ..errors import DataError

# Readers stream: memory holds one record (and a chunk of the file), never the file.
CHUNK = 1 << 20
_CHUNK = CHUNK

# -- the data as read ------------------------------------------------------------------------------
#
# Every byte a reader parses comes through a ReadLedger, which hashes it in the same pass: the
# content hash of what was read is the content hash of what was trained on, with no window
# between a hash and a read. The first read of a file records its SHA-256 (the same value
# ``fingerprint.file_sha256`` gives for the same bytes) and one SHA-256 per 1 MiB chunk; every
# later read of the file through the same ledger (a second pass, a reader that looks twice, a
# random-access format reading the footer first) is checked chunk by chunk against the first,
# so a file that changes between two reads is a DataError, never two different datasets.


def _changed(path: str, offset: int) -> DataError:
    return DataError(f"the file changed while airo was reading it (from byte {offset}); run again once nothing "
                     "writes to it", path=path, reason="changed_during_read")


class _FileRecord:
    """One file as first read: its chunks' digests and, once the end was read, its SHA-256."""

    def __init__(self, path: str):
        self.path = path
        self.chunks: list[bytes] = []
        self.size: int | None = None  # known once the last (short or empty) chunk was read
        self.sha256: str | None = None
        self._whole = hashlib.sha256()

    def accept(self, i: int, data: bytes) -> None:
        """Chunk ``i`` as just read: recorded (the next one in order) or checked (read before)."""
        if i < len(self.chunks):
            if hashlib.sha256(data).digest() != self.chunks[i]:
                raise _changed(self.path, i * _CHUNK)
            return
        if self.size is not None:  # past the end: a longer file than the first read saw
            if data:
                raise _changed(self.path, self.size)
            return
        assert i == len(self.chunks), "chunks are recorded in order"
        self.chunks.append(hashlib.sha256(data).digest())
        self._whole.update(data)
        if len(data) < _CHUNK:
            self.size = i * _CHUNK + len(data)
            self.sha256 = self._whole.hexdigest()


class _HashedRaw(io.RawIOBase):
    """A file read through its ``_FileRecord``: every chunk served is recorded or checked."""

    _KEEP = 4  # chunks kept (a random-access reader goes back and forth within a few)

    def __init__(self, record: _FileRecord, path: str):
        super().__init__()
        self._record = record
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DataError(f"cannot open: {exc.strerror}", path=path, reason="unreadable_file") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise DataError("not a regular file", path=path, reason="unreadable_file")
        self._pos = 0
        self._kept: OrderedDict[int, bytes] = OrderedDict()

    def _read_chunk(self, i: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, _CHUNK, i * _CHUNK)
        os.lseek(self._fd, i * _CHUNK, os.SEEK_SET)
        return os.read(self._fd, _CHUNK)

    def _chunk(self, i: int) -> bytes:
        data = self._kept.get(i)
        if data is not None:
            self._kept.move_to_end(i)
            return data
        record = self._record
        while record.size is None and len(record.chunks) < i:  # the chunks before, in order
            record.accept(len(record.chunks), self._read_chunk(len(record.chunks)))
        data = self._read_chunk(i)
        record.accept(i, data)
        self._kept[i] = data
        if len(self._kept) > self._KEEP:
            self._kept.popitem(last=False)
        return data

    def complete(self) -> None:
        """Read on to the end of the file, so that its record has its SHA-256 and size."""
        while self._record.size is None:
            self._chunk(len(self._record.chunks))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out):
            i, offset = divmod(self._pos, _CHUNK)
            piece = memoryview(self._chunk(i))[offset: offset + len(out) - done]
            if not piece:
                break
            out[done: done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            self.complete()
            offset += self._record.size
        elif whence == os.SEEK_CUR:
            offset += self._pos
        if offset < 0:
            raise OSError("negative seek position")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self._kept.clear()
        super().close()


class ReadLedger:
    """The files one preparation of the data read, each hashed as it was read (see above).

    ``content_hash(spec)`` is ``fingerprint.dataset_content_hash(spec)`` over the bytes read:
    the same value for unchanged files (same algorithm, same bytes), so it can be compared
    with a cache key or a checkpoint's record made before the read."""

    def __init__(self) -> None:
        self._files: dict[str, _FileRecord] = {}

    def _record(self, path) -> _FileRecord:
        key = os.path.abspath(os.fspath(path))
        if key not in self._files:
            self._files[key] = _FileRecord(os.fspath(path))
        return self._files[key]

    def open(self, path) -> io.BufferedReader:
        """``path`` opened for binary reading, every byte read recorded or checked."""
        return io.BufferedReader(_HashedRaw(self._record(path), os.fspath(path)), buffer_size=1 << 16)

    def digest(self, path) -> str:
        """The SHA-256 of ``path`` as read (the rest of it read now, through the ledger, if no
        reader got to its end; the whole of it for a file no reader opened)."""
        record = self._record(path)
        if record.sha256 is None:
            raw = _HashedRaw(record, os.fspath(path))
            try:
                raw.complete()
            finally:
                raw.close()
        return record.sha256

    def content_hash(self, spec: str | None) -> str | None:
        from ..fingerprint import dataset_content_hash

        return dataset_content_hash(spec, digest=self.digest)


def _ledger(ledger: "ReadLedger | None") -> "ReadLedger":
    return ledger if ledger is not None else ReadLedger()

