"""MCAP storage with integrity: chunk CRCs and whole-chunk commits when writing, chunk-by-chunk
checks when reading.

Writing (`CheckedMcapWriter`, the mcap storage of `bag.OutputBag`) is rosbags' MCAP writer with
two changes, both within the MCAP specification:

- every Chunk record carries the CRC-32 of its uncompressed records (`uncompressed_crc`;
  rosbags writes 0, "not computed"), so any standard reader (rosbags, the mcap libraries,
  Foxglove) can tell a damaged chunk from a good one;
- records reach the file one whole chunk at a time (the chunk and its message indexes). A
  write that fails, typically on a full disk, is truncated back to the end of the last
  complete chunk and the writer's counters roll back to it, so closing afterwards appends a
  valid summary and footer that describe exactly the messages on disk. `SpaceReserve` holds
  the room that summary (and metadata.yaml) needs until the bag is closed.

`CommittingSqlite3Writer` does the same for sqlite3 storage with a commit about every MiB.

Reading (`checked_messages`) takes an indexed MCAP file chunk by chunk in log-time order. A chunk
that fails a check (position and header against its index entry, decompression, CRC where one
is stored, record lengths, message times outside the chunk's range, unknown channels) is
skipped and reported as a `SkippedChunk` with the messages its index says it held; the rest of
the file is still read. Without a stored CRC, damage inside a message payload cannot be seen.

Allowed dependencies: rosbags, mcap, standard library.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import sqlite3
import struct
import zlib
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionMode
from rosbags.rosbag2.storage_mcap import McapWriter, PendingChunk
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

# MCAP record layout (specification: opcode u8, length u64, then the fields).
_CHUNK = 0x06
_MESSAGE = 0x05
_MESSAGE_INDEX = 0x07
_SCHEMA = 0x03
_CHANNEL = 0x04
_PREFIX = 9
# Chunk: message_start_time u64, message_end_time u64, uncompressed_size u64, uncompressed_crc
# u32, compression string (u32 length), records (u64 length).
_CHUNK_HEAD = struct.Struct('<QQQI')
_CRC_OFFSET = _PREFIX + 24
# Message: channel_id u16, sequence u32, log_time u64, publish_time u64, then the data.
_MESSAGE_HEAD = struct.Struct('<HIQQ')
# Message index: channel_id u16, then (log_time u64, offset u64) entries (u32 byte length).
_MESSAGE_INDEX_HEAD = struct.Struct('<HI')
_NOT_STARTED = (2**63 - 1, 0)
# What closing appends besides schemas and channels: metadata, statistics, offsets, footer.
_SUMMARY_BASE_BYTES = 16 << 10
_CHUNK_INDEX_BYTES = 128
# The sqlite3 writer commits after this many message bytes (rosbags' mcap chunks are 1 MiB).
_COMMIT_BYTES = 1 << 20


# ------------------------------------------------------------------------------------ writing


class _PendingRecords:
    """What rosbags' writer takes for its file: bytes held in memory until the owner commits.

    Attributes:
        offset: file offset of the first pending byte (the bytes committed so far).
        data: the pending bytes.
    """

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.data += data
        return len(data)

    def tell(self) -> int:
        return self.offset + len(self.data)

    def close(self) -> None:
        """Nothing to do: `CheckedMcapWriter` commits and closes the real file."""

    def patch(self, offset: int, value: bytes) -> None:
        start = offset - self.offset
        self.data[start : start + len(value)] = value


def _write_all(handle: int, data: memoryview) -> None:
    """os.write until everything is written; a full disk raises OSError(ENOSPC)."""
    while data:
        written = os.write(handle, data)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = data[written:]


class CheckedMcapWriter(McapWriter):
    """rosbags' MCAP storage writer with chunk CRCs and whole-chunk commits (module docstring).

    Attributes:
        committed_counts: messages on disk per connection id.
        committed_times: (first, last) log time on disk, (2**63 - 1, 0) before the first chunk.
    """

    def __init__(self, path: Path, compression: CompressionMode) -> None:
        super().__init__(path, compression)
        buffered = self.bio
        try:
            buffered.flush()  # magic and header record
        except BaseException:
            with contextlib.suppress(OSError):
                buffered.close()
            raise
        self._file = buffered.detach()  # unbuffered: a failed write leaves nothing behind
        self.bio: Any = _PendingRecords(self._file.tell())
        self._committed_chunks = 0
        self.committed_counts: dict[int, int] = {}
        self.committed_times = _NOT_STARTED

    def close_chunk(self) -> None:
        """Close the pending chunk with its CRC and commit it (raises OSError, rolled back)."""
        with self.chunk.bio.getbuffer() as records:
            crc = zlib.crc32(records)
        start = self.bio.tell()
        super().close_chunk()
        if self.bio.data[start - self.bio.offset] != _CHUNK:
            raise AssertionError('rosbags no longer writes the chunk record first')
        self.bio.patch(start + _CRC_OFFSET, crc.to_bytes(4, 'little'))
        self.commit()

    def commit(self) -> None:
        """Write the pending records whole; on failure truncate back and roll back counters."""
        pending = self.bio
        # Views of the written buffer may outlive this call (in a traceback): each commit
        # starts a new buffer rather than resizing the old one.
        try:
            _write_all(self._file.fileno(), memoryview(pending.data))
        except OSError:
            self._file.truncate(pending.offset)
            self._file.seek(pending.offset)
            pending.data = bytearray()
            self._roll_back()
            raise
        pending.offset += len(pending.data)
        pending.data = bytearray()
        self._committed_chunks = len(self.chunks)
        self.committed_counts = dict(self.channel_stats)
        self.committed_times = (self.message_start_time, self.message_end_time)

    def discard_pending(self) -> None:
        """Drop the messages not yet committed (before closing on a full disk)."""
        self.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))
        self.bio.data = bytearray()
        self._roll_back()

    def _roll_back(self) -> None:
        self.chunks = self.chunks[: self._committed_chunks]
        for channel in self.channel_stats:
            self.channel_stats[channel] = self.committed_counts.get(channel, 0)
        self.message_start_time, self.message_end_time = self.committed_times

    def summary_bytes(self) -> int:
        """Generous size of what `close` appends, plus the metadata.yaml next to the file."""
        schemas = sum(len(s.name) + len(s.data) + 32 for s in self.schemas)
        # Channels appear in the summary, the metadata record and metadata.yaml (QoS included).
        channels = sum(
            3 * (len(c.topic) + len(c.schema) + len(c.metadata) + 256) for c in self.channels
        )
        return (
            _SUMMARY_BASE_BYTES + schemas + channels + _CHUNK_INDEX_BYTES * (len(self.chunks) + 1)
        )

    def close(self, version: int, metadata: str) -> None:
        super().close(version, metadata)
        self.commit()
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class CommittingSqlite3Writer(Sqlite3Writer):
    """rosbags' sqlite3 storage writer committing about every MiB (rosbags: once, at close).

    On a full disk SQLite rolls the open transaction back; the committed messages stay, and
    `committed_counts` / `committed_times` say which they are.
    """

    def __init__(self, path: Path, compression: CompressionMode) -> None:
        super().__init__(path, compression)
        self._counts: dict[int, int] = {}
        self._times = _NOT_STARTED
        self._pending_bytes = 0
        self.committed_counts: dict[int, int] = {}
        self.committed_times = _NOT_STARTED

    def add_connection(self, connection: Any, offered_qos_profiles: str) -> None:
        super().add_connection(connection, offered_qos_profiles)
        self._counts.setdefault(connection.id, 0)
        self.commit()  # the topic and its definition survive a later rollback

    def write(self, connection: Any, timestamp: int, data: bytes | memoryview) -> None:
        super().write(connection, timestamp, data)
        self._counts[connection.id] += 1
        self._times = (min(self._times[0], timestamp), max(self._times[1], timestamp))
        self._pending_bytes += len(data)
        if self._pending_bytes > _COMMIT_BYTES:
            self.commit()

    def commit(self) -> None:
        try:
            self.conn.commit()
        except sqlite3.Error:
            self.discard_pending()
            raise
        self._pending_bytes = 0
        self.committed_counts = dict(self._counts)
        self.committed_times = self._times

    def discard_pending(self) -> None:
        """Roll back what is not committed (before closing on a full disk)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.rollback()
        self._counts = {key: self.committed_counts.get(key, 0) for key in self._counts}
        self._times = self.committed_times
        self._pending_bytes = 0

    def summary_bytes(self) -> int:
        """What closing needs: the metadata row (plus metadata.yaml) and SQLite's journal."""
        return _SUMMARY_BASE_BYTES + 2048 * len(self._counts) + _COMMIT_BYTES // 4


# Storage writers that keep `committed_counts` / `committed_times` and can `discard_pending`.
COMMITTING_STORAGES = (CheckedMcapWriter, CommittingSqlite3Writer)


class CheckedWriter(Writer):
    """rosbags' rosbag2 writer with `CheckedMcapWriter` and `CommittingSqlite3Writer` storage."""

    STORAGE_PLUGINS: ClassVar[Mapping[StoragePlugin, Any]] = {
        StoragePlugin.MCAP: CheckedMcapWriter,
        StoragePlugin.SQLITE3: CommittingSqlite3Writer,
    }


def match_committed(writer: Writer) -> dict[int, int]:
    """Make `writer`'s metadata counters describe what its storage has on disk.

    Returns:
        messages per connection id (what metadata.yaml will say).
    """
    storage = writer.storage
    if isinstance(storage, COMMITTING_STORAGES):
        writer.counts = {key: storage.committed_counts.get(key, 0) for key in writer.counts}
        writer.min_timestamp, writer.max_timestamp = storage.committed_times
    return dict(writer.counts)


class SpaceReserve:
    """A file that holds disk space for finishing a bag; released just before closing it.

    Args:
        path: the reserve file (inside the bag folder, on the bag's file system).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0

    def ensure(self, size: int) -> None:
        """Hold at least `size` bytes (grows to twice that, so it rarely grows).

        Raises:
            OSError: ENOSPC when the disk cannot hold it.
        """
        if size <= self.size:
            return
        target = 2 * size
        with self.path.open('ab') as stream:
            try:
                os.posix_fallocate(stream.fileno(), 0, target)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                # File systems without fallocate: real zeros hold the blocks just as well.
                stream.write(bytes(target - stream.tell()))
                stream.flush()
        self.size = target

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self.size = 0


# ------------------------------------------------------------------------------------ reading


class NotIndexedError(ValueError):
    """The MCAP file has no summary with chunk indexes (read it sequentially instead)."""


class _ChunkError(ValueError):
    """One chunk fails a check; the message says which."""


@dataclass(frozen=True)
class SkippedChunk:
    """A damaged chunk that `checked_messages` skipped.

    Attributes:
        file: the MCAP file.
        offset: byte offset of the chunk record in the file.
        reason: the check that failed.
        messages: messages per topic the chunk held, from its message indexes (None when those
            are damaged too).
    """

    file: Path
    offset: int
    reason: str
    messages: dict[str, int] | None

    @property
    def message_count(self) -> int | None:
        return None if self.messages is None else sum(self.messages.values())

    def describe(self) -> str:
        count = self.message_count
        lost = 'an unknown number of messages' if count is None else f'{count} message(s)'
        return f'skipped chunk at offset {self.offset} of {self.file}: {self.reason}; {lost} lost'

    def as_dict(self) -> dict[str, Any]:
        return {
            'file': str(self.file),
            'offset': self.offset,
            'reason': self.reason,
            'messages': self.messages,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SkippedChunk:
        """The inverse of `as_dict` (e.g. a chunk the bag player process reported)."""
        messages = values.get('messages')
        return cls(
            Path(values['file']),
            int(values['offset']),
            str(values['reason']),
            None if messages is None else {str(k): int(v) for k, v in messages.items()},
        )


def _summary(stream: BinaryIO, path: Path) -> Any:
    from mcap.reader import SeekingReader

    try:
        summary = SeekingReader(stream).get_summary()
    except Exception as error:  # the mcap library raises several types for a bad footer
        raise NotIndexedError(f'{path}: no readable summary ({error})') from error
    if summary is None or not summary.chunk_indexes:
        raise NotIndexedError(f'{path}: no chunk index')
    return summary


def is_indexed(path: Path) -> bool:
    """True if `path` is an MCAP file with a readable summary listing its chunks."""
    try:
        with path.open('rb') as stream:
            _summary(stream, path)
    except (OSError, NotIndexedError):
        return False
    return True


def checked_messages(
    path: Path,
    topics: Collection[str] | None,
    on_skip: Callable[[SkippedChunk], None],
) -> Iterator[tuple[str, int, bytes]]:
    """(topic, log time, data) of an indexed MCAP file in log-time order, skipping damage.

    Args:
        path: the .mcap file.
        topics: topics to deliver (None: all).
        on_skip: called once per damaged chunk, when it is reached.

    Raises:
        NotIndexedError: the file has no summary or no chunk indexes.
        OSError: the file cannot be read.
    """
    with path.open('rb') as stream:
        summary = _summary(stream, path)
        size = os.fstat(stream.fileno()).st_size
        channels = {key: channel.topic for key, channel in summary.channels.items()}
        wanted = {key for key, topic in channels.items() if topics is None or topic in topics}
        indexes = sorted(
            summary.chunk_indexes, key=lambda c: (c.message_start_time, c.chunk_start_offset)
        )
        sources = [
            _chunk_source(stream, size, path, index, channels, wanted, on_skip)
            for index in indexes
            if wanted & set(index.message_index_offsets) or not index.message_index_offsets
        ]
        # Each chunk first yields a placeholder at its start time, so the merge reads a chunk
        # only when its messages are due (one chunk in memory for a time-ordered file).
        for log_time, _, _, topic, data in heapq.merge(*sources):
            if topic is not None:
                yield topic, log_time, data


_Entry = tuple[int, int, int, 'str | None', bytes]


def _chunk_source(
    stream: BinaryIO,
    size: int,
    path: Path,
    index: Any,
    channels: dict[int, str],
    wanted: set[int],
    on_skip: Callable[[SkippedChunk], None],
) -> Iterator[_Entry]:
    yield (index.message_start_time, index.chunk_start_offset, -1, None, b'')
    try:
        entries = _read_chunk(stream, size, index, channels, wanted)
    except _ChunkError as error:
        counts = _indexed_counts(stream, size, index, channels)
        on_skip(SkippedChunk(path, index.chunk_start_offset, str(error), counts))
        return
    yield from entries


def _read_chunk(
    stream: BinaryIO, size: int, index: Any, channels: dict[int, str], wanted: set[int]
) -> list[_Entry]:
    """The wanted messages of one chunk, sorted by log time; `_ChunkError` on any damage."""
    start, length = index.chunk_start_offset, index.chunk_length
    if start + length > size or length < _PREFIX + _CHUNK_HEAD.size + 12:
        raise _ChunkError(f'its index entry ({length} bytes) points outside the file')
    stream.seek(start)
    raw = memoryview(stream.read(length))
    if len(raw) != length:
        raise _ChunkError('the file ends inside the chunk')
    if raw[0] != _CHUNK:
        raise _ChunkError(f'no chunk record there (opcode 0x{raw[0]:02x})')
    (record_length,) = struct.unpack_from('<Q', raw, 1)
    if record_length != length - _PREFIX:
        raise _ChunkError(f'record length {record_length} differs from the index ({length - 9})')
    start_time, end_time, uncompressed_size, crc = _CHUNK_HEAD.unpack_from(raw, _PREFIX)
    position = _PREFIX + _CHUNK_HEAD.size
    (name_length,) = struct.unpack_from('<I', raw, position)
    position += 4
    if position + name_length + 8 > length:
        raise _ChunkError(f'impossible compression name length {name_length}')
    compression = bytes(raw[position : position + name_length]).decode('utf-8', 'replace')
    position += name_length
    (records_length,) = struct.unpack_from('<Q', raw, position)
    position += 8
    if position + records_length != length:
        raise _ChunkError(f'records length {records_length} does not fill the chunk')
    header = (start_time, end_time, compression, records_length, uncompressed_size)
    expected = (
        index.message_start_time,
        index.message_end_time,
        index.compression,
        index.compressed_size,
        index.uncompressed_size,
    )
    if header != expected:
        raise _ChunkError(f'chunk header {header} differs from its index entry {expected}')
    records = _decompress(compression, raw[position:], uncompressed_size)
    if crc and zlib.crc32(records) != crc:
        raise _ChunkError(f'CRC mismatch (stored {crc:08x}, computed {zlib.crc32(records):08x})')
    return _parse_records(records, start, start_time, end_time, channels, wanted)


def _decompress(compression: str, data: memoryview, size: int) -> memoryview:
    if compression == '':
        records = data
    else:
        try:
            if compression == 'zstd':
                import zstandard

                records = memoryview(zstandard.ZstdDecompressor().decompress(data, size))
            elif compression == 'lz4':
                import lz4.frame

                records = memoryview(lz4.frame.decompress(data))
            else:
                raise _ChunkError(f'unknown compression {compression!r}')
        except _ChunkError:
            raise
        except Exception as error:  # each decompressor has its own error types
            raise _ChunkError(f'{compression} data does not decompress ({error})') from error
    if len(records) != size:
        raise _ChunkError(f'{len(records)} bytes of records where the chunk says {size}')
    return records


def _parse_records(
    records: memoryview,
    chunk_offset: int,
    start_time: int,
    end_time: int,
    channels: dict[int, str],
    wanted: set[int],
) -> list[_Entry]:
    entries: list[_Entry] = []
    position, end = 0, len(records)
    while position < end:
        if position + _PREFIX > end:
            raise _ChunkError(f'record at chunk byte {position} is cut off')
        opcode = records[position]
        (length,) = struct.unpack_from('<Q', records, position + 1)
        body = position + _PREFIX
        if length > end - body:
            raise _ChunkError(f'record at chunk byte {position} claims {length} bytes')
        if opcode == _MESSAGE:
            if length < _MESSAGE_HEAD.size:
                raise _ChunkError(f'message record of {length} bytes at chunk byte {position}')
            channel, _, log_time, _ = _MESSAGE_HEAD.unpack_from(records, body)
            if channel not in channels:
                raise _ChunkError(f'message on unknown channel {channel}')
            if not start_time <= log_time <= end_time:
                raise _ChunkError(
                    f'message log time {log_time} outside the chunk [{start_time}, {end_time}]'
                )
            if channel in wanted:
                data = bytes(records[body + _MESSAGE_HEAD.size : body + length])
                entries.append((log_time, chunk_offset, len(entries), channels[channel], data))
        elif opcode not in (_SCHEMA, _CHANNEL):
            raise _ChunkError(f'record opcode 0x{opcode:02x} cannot be inside a chunk')
        position = body + length
    entries.sort(key=lambda entry: entry[:3])
    return entries


def _indexed_counts(
    stream: BinaryIO, size: int, index: Any, channels: dict[int, str]
) -> dict[str, int] | None:
    """Messages per topic of a chunk according to its message index records (None: damaged)."""
    counts: dict[str, int] = {}
    for channel, offset in index.message_index_offsets.items():
        head_size = _PREFIX + _MESSAGE_INDEX_HEAD.size
        if channel not in channels or offset + head_size > size:
            return None
        stream.seek(offset)
        head = stream.read(head_size)
        if len(head) != head_size or head[0] != _MESSAGE_INDEX:
            return None
        stored_channel, entries = _MESSAGE_INDEX_HEAD.unpack_from(head, _PREFIX)
        if stored_channel != channel or entries % 16:
            return None
        topic = channels[channel]
        counts[topic] = counts.get(topic, 0) + entries // 16
    return counts
