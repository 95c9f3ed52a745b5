"""Reading and writing rosbag2 bags with `rosbags`: a typestore that knows the m2a messages, a
reader that survives damaged bags, an output bag that always closes, and camera discovery.

Reading (`BagReader`) accepts a bag folder (with `metadata.yaml`), a folder whose metadata is
missing (a recording that was killed) or a single `.mcap` / `.db3` file. Indexed mcap files are
read chunk by chunk with `mcap_io.checked_messages`: a damaged chunk (CRC mismatch, bad lengths,
...) is skipped, logged once as "skipped chunk at offset N of FILE: REASON" and listed in
`BagReader.skipped`, and reading goes on. When `rosbags` cannot open an mcap bag (no footer or
summary: a truncated file), the files are read sequentially with the `mcap` library's stream
reader instead, which recovers every message stored before the damage. Damage that ends the
reading raises one `BagReadError` that names the bag, the cause and how many messages were
read, after everything before it was delivered.

Writing (`OutputBag`) writes mcap chunk CRCs and, on a full disk, closes the bag with the
complete chunks already on disk (see `mcap_io`). Replacing an existing bag (`--overwrite`,
`StagedBag`) writes the new bag next to it and swaps it in only once it is complete and closed:
on a full disk, an error or Ctrl-C the previous bag stays as it was.

Allowed dependencies: rosbags, mcap, PyYAML, standard library (no torch, no rclpy: the player
process imports this module).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from m2a_perception.files import WriteFailedError, fsync_directory, write_failure
from m2a_perception.ros.replay.mcap_io import (
    COMMITTING_STORAGES,
    CheckedWriter,
    NotIndexedError,
    SkippedChunk,
    SpaceReserve,
    checked_messages,
    is_indexed,
    match_committed,
)

LOGGER = logging.getLogger(__name__)

MSGS_PACKAGE = 'm2a_perception_msgs'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
CAMERA_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
GROUND_TRUTH_KINDS = ('anomaly', 'semantic')
GROUND_TRUTH_SEGMENT = 'ground_truth'
STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
# Holds disk space for closing an output bag on a full disk (removed when the bag is closed).
RESERVE_NAME = '.m2a_space_reserve'
STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# Prefix of the bag player's stdout lines that report a skipped corrupt chunk (JSON follows).
SKIPPED_CHUNK_PREFIX = 'skipped-chunk '
# Camera names the node accepts (`cameras.names`, see ros/params.py).
_CAMERA_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


class BagReadError(RuntimeError):
    """The input bag cannot be read (missing, unsupported, truncated or corrupt).

    Attributes:
        path: the bag.
        messages_read: messages delivered before the error.
        report: set by `replay_bag` to the partial replay report, if any.
    """

    def __init__(self, path: Path, message: str, messages_read: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.messages_read = messages_read
        self.report: Any = None


# --------------------------------------------------------------------------------- typestore


def message_definition_dirs() -> list[Path]:
    """Folders that may hold the m2a_perception_msgs `.msg` files, most specific first.

    The installed share folder (ament prefixes, the venv, the prefix of the importable message
    package) and, for a source checkout, `ros2_ws/src/m2a_perception_msgs/msg`.
    """
    prefixes = [Path(p) for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    prefixes.append(Path(sys.prefix))
    with contextlib.suppress(ImportError):
        import m2a_perception_msgs

        # <prefix>/lib/pythonX.Y/site-packages/m2a_perception_msgs/__init__.py
        prefixes.append(Path(m2a_perception_msgs.__file__).resolve().parents[4])
    candidates = [prefix / 'share' / MSGS_PACKAGE / 'msg' for prefix in prefixes]
    # Source checkout: .../ros2_ws/src/m2a_perception/m2a_perception/ros/replay/bag.py
    candidates.append(Path(__file__).resolve().parents[4] / MSGS_PACKAGE / 'msg')
    return candidates


def find_message_definitions() -> dict[str, str]:
    """`m2a_perception_msgs/msg/<Name>` -> `.msg` text.

    Raises:
        FileNotFoundError: if no folder with the `.msg` files exists.
    """
    for folder in message_definition_dirs():
        files = sorted(folder.glob('*.msg')) if folder.is_dir() else []
        if files:
            return {f'{MSGS_PACKAGE}/msg/{path.stem}': path.read_text() for path in files}
    searched = ', '.join(str(p) for p in message_definition_dirs())
    raise FileNotFoundError(f'no {MSGS_PACKAGE} .msg files found; searched {searched}')


@functools.cache
def m2a_typestore() -> Typestore:
    """The ROS 2 Kilted typestore plus the m2a_perception_msgs types (from their .msg files)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for name, text in find_message_definitions().items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def register_definition(store: Typestore, msgtype: str, msgdef: str | None) -> bool:
    """Teach `store` a type from a bag's (concatenated) definition; False if impossible."""
    if msgtype in store.types:
        return True
    if not msgdef:
        return False
    try:
        store.register(get_types_from_msg(msgdef, msgtype))
    except Exception as error:  # rosbags raises several parser error types
        LOGGER.warning('cannot parse the definition of %s: %s', msgtype, error)
        return False
    return msgtype in store.types


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag.

    Attributes:
        name: topic name.
        msgtype: e.g. 'sensor_msgs/msg/Image'.
        msgdef: the definition stored in the bag ('' if none).
        count: messages in the bag (None when unknown, e.g. a damaged bag).
    """

    name: str
    msgtype: str
    msgdef: str = ''
    count: int | None = None


@dataclass(frozen=True)
class BagMessage:
    """One serialized message.

    Attributes:
        topic: topic name.
        log_time_ns: receive (log) time in the bag, nanoseconds.
        data: CDR bytes.
    """

    topic: str
    log_time_ns: int
    data: bytes


def storage_files(path: Path) -> list[Path]:
    """The storage files of a bag folder (or the file itself), in playback order."""
    if path.is_file():
        return [path]
    files = [p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES]
    # rosbag2 splits as <name>_0.mcap, <name>_1.mcap, ...: order by the trailing number.
    return sorted(files, key=lambda p: (_split_index(p.stem), p.name))


def _split_index(stem: str) -> int:
    match = re.search(r'_(\d+)$', stem)
    return int(match.group(1)) if match else 0


class BagReader:
    """Messages of a rosbag2 bag, robust to truncation and corruption.

    Args:
        path: bag folder or storage file.

    Attributes:
        topics: the bag's topics by name.
        storage: 'mcap', 'sqlite3' or 'mixed'.
        recovering: the mcap files are read sequentially (no usable index).
        skipped: damaged chunks skipped by the last `messages` call (`mcap_io.SkippedChunk`).

    Raises:
        BagReadError: the bag does not exist or cannot be opened at all.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagReadError(self.path, f'input bag {self.path} does not exist')
        self.recovering = False
        self.damage: str = ''
        self._readers: list[Reader] = []
        self._files: list[Path] = []
        self.topics: dict[str, TopicInfo] = {}
        self.storage = ''
        # Indexed mcap files, read chunk by chunk with checks (`mcap_io.checked_messages`).
        self._checked_files: list[Path] = []
        self.skipped: list[SkippedChunk] = []
        try:
            self._open_with_rosbags()
        except BagReadError:
            raise
        except Exception as error:
            self._close_readers()
            self._open_damaged(error)

    # -- opening

    def _open_with_rosbags(self) -> None:
        has_metadata = self.path.is_dir() and (self.path / 'metadata.yaml').is_file()
        targets = [self.path] if has_metadata or self.path.is_file() else self._storage_files()
        for target in targets:
            reader = Reader(target)
            reader.open()
            self._readers.append(reader)
        files = storage_files(self.path)
        kinds = {STORAGE_SUFFIXES.get(p.suffix, p.suffix) for p in files}
        self.storage = kinds.pop() if len(kinds) == 1 else 'mixed'
        if self.storage == 'mcap' and all(is_indexed(path) for path in files):
            self._checked_files = files
        for reader in self._readers:
            for connection in reader.connections:
                previous = self.topics.get(connection.topic)
                count = connection.msgcount + (previous.count or 0 if previous else 0)
                self.topics[connection.topic] = TopicInfo(
                    connection.topic, connection.msgtype, connection.msgdef.data, count
                )

    def _storage_files(self) -> list[Path]:
        files = storage_files(self.path)
        if not files:
            raise BagReadError(
                self.path,
                f'input bag {self.path} has neither metadata.yaml nor .mcap/.db3 files',
            )
        return files

    def _open_damaged(self, error: Exception) -> None:
        files = self._storage_files() if self.path.is_dir() else [self.path]
        mcap_files = [p for p in files if p.suffix == '.mcap']
        if not mcap_files:
            raise BagReadError(
                self.path,
                f'input bag {self.path} cannot be opened ({type(error).__name__}: {error}); '
                'the file is corrupt or truncated and is not an mcap file that could be read '
                'sequentially',
            ) from error
        LOGGER.warning(
            'input bag %s cannot be opened normally (%s); reading its mcap records '
            'sequentially to recover the messages before the damage',
            self.path,
            error,
        )
        self.recovering = True
        self.storage = 'mcap'
        self._files = mcap_files
        counts: dict[str, int] = {}
        channels: dict[int, TopicInfo] = {}
        for topic, _, _ in self._stream(channels, with_data=False):
            counts[topic] = counts.get(topic, 0) + 1
        self.topics = {
            info.name: TopicInfo(info.name, info.msgtype, info.msgdef, counts.get(info.name, 0))
            for info in channels.values()
        }
        if not self.topics:
            raise BagReadError(
                self.path,
                f'input bag {self.path} cannot be read: {self.damage or error}; no message could '
                'be recovered',
            ) from error

    def _stream(
        self, channels: dict[int, TopicInfo], with_data: bool
    ) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time, data) of every message record; notes damage in `self.damage`."""
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        for path in self._files:
            schemas: dict[int, Schema] = {}
            file_channels: dict[int, TopicInfo] = {}
            try:
                with path.open('rb') as stream:
                    for record in StreamReader(stream, skip_magic=False).records:
                        if isinstance(record, Schema):
                            schemas[record.id] = record
                        elif isinstance(record, Channel):
                            schema = schemas.get(record.schema_id)
                            info = TopicInfo(
                                record.topic,
                                schema.name if schema else '',
                                schema.data.decode('utf-8', 'replace') if schema else '',
                            )
                            file_channels[record.id] = info
                            channels.setdefault(len(channels) + 1, info)
                        elif isinstance(record, Message):
                            info = file_channels.get(record.channel_id)
                            if info is not None:
                                yield info.name, record.log_time, record.data if with_data else b''
            except Exception as error:
                cause = f'{type(error).__name__}: {str(error) or "unexpected end of file"}'
                self.damage = f'{path.name} is truncated or corrupt ({cause})'
                return

    # -- reading

    @property
    def message_count(self) -> int | None:
        """Messages in the bag (for a damaged bag: those that can be recovered)."""
        counts = [info.count for info in self.topics.values()]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def count(self, topics: Collection[str]) -> int | None:
        """Messages on `topics`."""
        counts = [self.topics[t].count for t in topics if t in self.topics]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def messages(self, topics: Collection[str] | None = None) -> Iterator[BagMessage]:
        """Messages on `topics` (all if None) in log-time order per storage file.

        Raises:
            BagReadError: after the last readable message, if the bag is damaged.
        """
        wanted = set(self.topics) if topics is None else set(topics)
        delivered = 0
        if self.recovering:
            self.damage = ''
            for topic, log_time, data in self._stream({}, with_data=True):
                if topic in wanted:
                    delivered += 1
                    yield BagMessage(topic, log_time, data)
            if self.damage:
                raise BagReadError(self.path, self._damage_text(delivered), delivered)
            return
        if self._checked_files:
            yield from self._checked_messages(wanted)
            return
        for reader in self._readers:
            connections = [c for c in reader.connections if c.topic in wanted]
            if not connections:
                continue
            try:
                for connection, log_time, data in reader.messages(connections=connections):
                    delivered += 1
                    yield BagMessage(connection.topic, log_time, bytes(data))
            except Exception as error:
                raise BagReadError(
                    self.path,
                    f'input bag {self.path} is corrupt or truncated: reading failed after '
                    f'{delivered} message(s) ({type(error).__name__}: {error})',
                    delivered,
                ) from error

    def _checked_messages(self, wanted: set[str]) -> Iterator[BagMessage]:
        """Chunk-checked reading of an all-mcap bag; damaged chunks are skipped and reported."""
        self.skipped = []
        delivered = 0
        for path in self._checked_files:
            try:
                for topic, log_time, data in checked_messages(path, wanted, self._on_skip):
                    delivered += 1
                    yield BagMessage(topic, log_time, data)
            except (OSError, NotIndexedError) as error:
                raise BagReadError(
                    self.path,
                    f'input bag {self.path} is corrupt or truncated: reading {path.name} failed '
                    f'after {delivered} message(s) ({error})',
                    delivered,
                ) from error
        if len(self.skipped) > 1:
            lost = [chunk.message_count for chunk in self.skipped]
            known = sum(n for n in lost if n is not None)
            LOGGER.warning(
                'input bag %s: skipped %d damaged chunk(s), %s message(s) lost',
                self.path,
                len(self.skipped),
                known if None not in lost else f'at least {known}',
            )

    def _on_skip(self, chunk: SkippedChunk) -> None:
        self.skipped.append(chunk)
        # The first one in full; the rest in the summary at the end (a badly damaged bag
        # would otherwise print one line per chunk).
        level = logging.WARNING if len(self.skipped) == 1 else logging.DEBUG
        LOGGER.log(level, '%s', chunk.describe())

    def _damage_text(self, delivered: int) -> str:
        return (
            f'input bag {self.path} is damaged: {self.damage}; {delivered} message(s) before the '
            'damage were read, the rest is lost'
        )

    def close(self) -> None:
        self._close_readers()

    def _close_readers(self) -> None:
        for reader in self._readers:
            with contextlib.suppress(Exception):
                reader.close()
        self._readers = []

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ writing

# `<name>.m2a-staging-<pid>`: the sibling folder a replacing bag is written in (see StagedBag).
STAGING_MARK = '.m2a-staging-'
# Inside the staging folder, the previous bag for the instant between the two renames.
PREVIOUS_PREFIX = 'previous-'


def check_bag_folder(path: Path) -> None:
    """Accept `path` as a bag to replace only if it looks like one (metadata or storage files).

    Raises:
        ValueError: if `path` exists and is not a bag folder.
    """
    if path.exists() and not (
        path.is_dir()
        and (
            (path / 'metadata.yaml').exists()
            or any(p.suffix in STORAGE_SUFFIXES for p in path.iterdir())
        )
    ):
        raise ValueError(f'{path} exists and is not a bag folder; not replacing it')


class StagedBag:
    """Where to write a bag that may replace an existing one, and the swap once it is complete.

    Without a bag at `target`, `path` is `target` itself and `commit`/`discard` do nothing. With
    one (only allowed with `overwrite`), the new bag is written as
    `<parent>/<name>.m2a-staging-<pid>/<name>`: the same file system (so the swap is a rename)
    and the same folder name (so its storage file is named as rosbag2 names it). `commit` then
    renames the old bag into the staging folder (as `previous-<name>`), the new one into place,
    and deletes the staging folder; `discard` deletes the staging folder, the old bag untouched.
    A process killed outright (SIGKILL, power loss) may leave the staging folder behind; the
    previous bag is then either still at `target` or, between the two renames, inside it.

    Args:
        target: the bag folder to create or replace.
        overwrite: allow replacing an existing bag folder.

    Raises:
        FileExistsError: `target` exists and `overwrite` is false.
        ValueError: `target` exists and is not a bag folder.
    """

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.target = Path(target)
        self.staging: Path | None = None
        if self.target.exists():
            if not overwrite:
                raise FileExistsError(
                    f'output bag {self.target} exists; remove it, pick another path or pass '
                    '--overwrite'
                )
            check_bag_folder(self.target)
            self.staging = self.target.parent / f'{self.target.name}{STAGING_MARK}{os.getpid()}'
            # Left by an earlier process of the same id that was killed: never a finished bag.
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        self.path = self.target if self.staging is None else self.staging / self.target.name

    @property
    def replacing(self) -> bool:
        """The new bag is written aside and replaces an existing one on `commit`."""
        return self.staging is not None

    def commit(self) -> None:
        """Swap the complete new bag in for the old one (safe to call twice)."""
        staging, self.staging = self.staging, None
        if staging is None:
            return
        previous = staging / f'{PREVIOUS_PREFIX}{self.target.name}'
        os.rename(self.target, previous)
        try:
            os.rename(staging / self.target.name, self.target)
        except OSError:
            os.rename(previous, self.target)  # put the old bag back; the new one is discarded
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(self.target.parent)
        shutil.rmtree(staging, ignore_errors=True)

    def discard(self) -> None:
        """Delete the new bag; the old one stays as it was (safe to call twice)."""
        staging, self.staging = self.staging, None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

    def unchanged_note(self) -> str:
        """How a failure leaves things when replacing: for the end of the error sentence."""
        return f'the previous bag {self.target} is unchanged; the incomplete new one was deleted'


@dataclass
class OutputBag:
    """A rosbag2 bag being written; `close` always leaves a complete, readable bag.

    mcap storage (`mcap_io.CheckedMcapWriter`) writes chunk CRCs and commits whole chunks,
    sqlite3 storage commits about every MiB. When a write fails (a full disk), the bag is closed
    at once with what is committed: a
    `SpaceReserve` file in the bag folder holds the room for the summary and metadata.yaml and
    is released just before closing. `counts` then says what the bag holds, and the
    `WriteFailedError` raised (and kept in `failure`) says so in one sentence.

    With `overwrite`, an existing bag at `path` is replaced only by a complete one: the new bag
    is written aside (`StagedBag`) and swapped in by `close`. A write failure, or leaving the
    `with` block by an exception (Ctrl-C included), deletes the new bag and keeps the old one.
    Without a previous bag, or without `overwrite`, an exception closes the bag normally:
    everything written so far stays readable.

    Args:
        path: bag folder to create (must not exist unless `overwrite`).
        storage: 'mcap' (default) or 'sqlite3'.
        typestore: where message definitions and hashes come from (default `m2a_typestore`).
        overwrite: replace an existing bag folder at `path` once the new one is complete.

    Raises:
        FileExistsError: `path` exists and `overwrite` is false.
        ValueError: an unknown storage, or `path` exists and is not a bag folder.
        WriteFailedError: the bag cannot be created.
    """

    path: Path
    storage: str = 'mcap'
    typestore: Typestore | None = None
    counts: dict[str, int] = field(default_factory=dict)
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.storage not in STORAGE_PLUGINS:
            raise ValueError(
                f'storage must be one of {tuple(STORAGE_PLUGINS)}, got {self.storage}'
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staged = StagedBag(self.path, self.overwrite)
        self.typestore = self.typestore or m2a_typestore()
        self.failure: WriteFailedError | None = None
        self._connections: dict[str, Any] = {}
        self.types: dict[str, str] = {}
        written = self._staged.path
        self._reserve = SpaceReserve(written / RESERVE_NAME)
        writer = CheckedWriter(written, version=9, storage_plugin=STORAGE_PLUGINS[self.storage])
        try:
            writer.open()
            self._writer: Writer | None = writer
            self._keep_reserve()
        except OSError as error:
            self._writer = None
            with contextlib.suppress(Exception):
                writer.abort()
            self._reserve.release()
            shutil.rmtree(written, ignore_errors=True)
            outcome = self._staged.unchanged_note() if self._staged.replacing else ''
            self._staged.discard()
            raise _failure(self.path, error, outcome or 'nothing was written') from error

    def add_topic(self, topic: str, msgtype: str, msgdef: str = '') -> None:
        """Declare a topic (idempotent); unknown types are learnt from `msgdef`.

        Raises:
            ValueError: a topic declared twice with different types, or an unknown type
                without a usable definition.
            WriteFailedError: the disk cannot hold the bag's summary any more (bag closed).
        """
        if topic in self._connections:
            if self.types[topic] != msgtype:
                raise ValueError(f'{topic} already has type {self.types[topic]}, not {msgtype}')
            return
        writer = self._open_writer()
        assert self.typestore is not None
        if not register_definition(self.typestore, msgtype, msgdef):
            raise ValueError(f'cannot write {topic}: message type {msgtype} is unknown')
        self._connections[topic] = writer.add_connection(topic, msgtype, typestore=self.typestore)
        self.types[topic] = msgtype
        self.counts[topic] = 0
        try:
            self._keep_reserve()
        except OSError as error:
            raise self._fail(error) from error

    def write(self, topic: str, log_time_ns: int, data: bytes) -> None:
        """Write one serialized message on a declared topic.

        Raises:
            WriteFailedError: the write failed (disk full); the bag is closed with the messages
                already on disk (`counts`).
        """
        writer = self._open_writer()
        try:
            writer.write(self._connections[topic], int(log_time_ns), data)
            self.counts[topic] += 1
            self._keep_reserve()
        except (OSError, sqlite3.Error) as error:
            raise self._fail(error) from error

    @property
    def closed(self) -> bool:
        return self._writer is None

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        """Finish the storage file and metadata.yaml; with `overwrite`, swap the new bag in for
        the old one (safe to call twice).

        Raises:
            WriteFailedError: the disk filled while finishing; what could be kept is closed (or,
                when replacing a bag, the old one is kept).
        """
        writer = self._writer
        if writer is None:
            return
        self._reserve.release()
        try:
            writer.close()
        except (OSError, sqlite3.Error) as error:
            raise self._fail(error) from error
        self._writer = None
        try:
            self._staged.commit()
        except OSError as error:
            self.failure = _failure(self.path, error, self._staged.unchanged_note())
            raise self.failure from error

    def discard(self) -> None:
        """Stop writing. When replacing a bag, delete the new one and keep the old one;
        otherwise close the bag normally (everything written so far stays readable)."""
        if not self._staged.replacing:
            with contextlib.suppress(WriteFailedError):
                self.close()
            return
        writer, self._writer = self._writer, None
        self._reserve.release()
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()
        self._staged.discard()

    def _open_writer(self) -> Writer:
        if self._writer is None:
            if self.failure is not None:
                raise self.failure
            raise RuntimeError(f'output bag {self.path} is closed')
        return self._writer

    def _keep_reserve(self) -> None:
        storage = self._writer.storage if self._writer is not None else None
        if isinstance(storage, COMMITTING_STORAGES):
            self._reserve.ensure(storage.summary_bytes())

    def _fail(self, error: BaseException) -> WriteFailedError:
        """Close the bag with what is on disk after `error`; the sentence that says so."""
        writer, self._writer = self._writer, None
        assert writer is not None
        self._reserve.release()
        storage = writer.storage
        if isinstance(storage, COMMITTING_STORAGES):
            storage.discard_pending()
        if storage is None:  # the storage file is complete; metadata.yaml failed
            if self._staged.replacing:
                self._staged.discard()
                outcome = self._staged.unchanged_note()
            else:
                outcome = (
                    f'its storage file is complete with {self.message_count} message(s), but '
                    'metadata.yaml is missing; m2a-replay reads the storage file directly'
                )
            self.failure = _failure(self.path, error, outcome)
            return self.failure
        committed = match_committed(writer)
        try:
            writer.close()
            closed = True
        except Exception:
            closed = False
            with contextlib.suppress(Exception):
                writer.abort()
        if isinstance(storage, COMMITTING_STORAGES):
            self.counts = {
                topic: committed.get(connection.id, 0)
                for topic, connection in self._connections.items()
            }
        total = self.message_count
        if self._staged.replacing:
            self._staged.discard()
            outcome = self._staged.unchanged_note()
        elif closed:
            outcome = f'the bag was closed and holds the {total} message(s) written before'
        else:
            outcome = (
                f'the bag could not be finished: its storage file keeps {total} message(s) in '
                'complete chunks without an index, which m2a-replay still reads'
            )
        self.failure = _failure(self.path, error, outcome)
        return self.failure

    def __enter__(self) -> OutputBag:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # On errors a new bag is no replacement for a complete old one; a first bag is closed
        # normally, so everything written so far stays readable.
        if exc_type is not None:
            self.discard()
        else:
            self.close()


def _failure(path: Path, error: BaseException, outcome: str) -> WriteFailedError:
    failure = write_failure(path, error, outcome)
    if failure is None:  # e.g. sqlite3's own error types
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        failure = WriteFailedError(errno.EIO, f'could not write {path}: {first_line} ({outcome})')
    return failure


# ------------------------------------------------------------------------------------ cameras


@dataclass(frozen=True)
class CameraSource:
    """A camera stream in a bag and where its outputs and ground truth live.

    Attributes:
        name: camera name as the node uses it (`cameras.names`).
        topic: input topic in the bag.
        transport: 'raw' (sensor_msgs/Image) or 'compressed' (CompressedImage).
        namespace: namespace of the outputs ('' or '/a/b'); outputs are `<namespace>/<name>/...`.
    """

    name: str
    topic: str
    transport: str
    namespace: str = ''

    @property
    def prefix(self) -> str:
        return f'{self.namespace}/{self.name}'

    def ground_truth_topic(self, kind: str) -> str:
        """`<prefix>/ground_truth/<kind>`, kind 'anomaly' or 'semantic'."""
        if kind not in GROUND_TRUTH_KINDS:
            raise ValueError(f'ground-truth kind must be one of {GROUND_TRUTH_KINDS}, got {kind}')
        return f'{self.prefix}/{GROUND_TRUTH_SEGMENT}/{kind}'

    def output_topic(self, relative: str) -> str:
        """Absolute topic of a node output, e.g. 'anomaly/score' -> '/front/anomaly/score'."""
        return f'{self.prefix}/{relative}'


def camera_from_topic(topic: str, msgtype: str) -> CameraSource | None:
    """The camera a topic belongs to by the node's convention, or None.

    `<ns>/<name>/image[...]` (Image) and `<ns>/<name>/image[...]/compressed` (CompressedImage),
    where the last segment before `/compressed` starts with 'image' (image, image_raw,
    image_rect_color, ...). Ground-truth topics are never cameras.
    """
    if msgtype not in CAMERA_TYPES or f'/{GROUND_TRUTH_SEGMENT}/' in f'{topic}/':
        return None
    parts = [p for p in topic.split('/') if p]
    transport = 'raw'
    if msgtype == COMPRESSED_TYPE:
        transport = 'compressed'
        if parts and parts[-1] == 'compressed':
            parts = parts[:-1]
    if len(parts) < 2 or not parts[-1].startswith('image'):
        return None
    namespace = ''.join(f'/{p}' for p in parts[:-2])
    return CameraSource(parts[-2], topic, transport, namespace)


def detect_cameras(
    topics: Mapping[str, TopicInfo], requested: Sequence[str] | None = None
) -> list[CameraSource]:
    """The cameras to replay.

    Args:
        topics: the bag's topics.
        requested: None for every camera topic found; otherwise items 'NAME' (a found camera),
            'TOPIC' (an image topic of the bag) or 'NAME=TOPIC' (any image topic under that
            name; outputs and ground truth then live under '/NAME').

    Raises:
        ValueError: naming the request that matches nothing, or clashing camera names.
    """
    found: list[CameraSource] = []
    for topic, info in sorted(topics.items()):
        camera = camera_from_topic(topic, info.msgtype)
        if camera is not None:
            found.append(camera)
    if requested is None:
        # A camera recorded raw and compressed: replay the raw stream once.
        by_prefix: dict[str, CameraSource] = {}
        for camera in found:
            kept = by_prefix.get(camera.prefix)
            if kept is None or (kept.transport == 'compressed' and camera.transport == 'raw'):
                by_prefix[camera.prefix] = camera
        cameras = list(by_prefix.values())
        if not cameras:
            images = [t for t, i in topics.items() if i.msgtype in CAMERA_TYPES]
            raise ValueError(
                'no camera topics (<ns>/<name>/image[...] or .../compressed) in the bag'
                + (
                    f'; image topics found: {", ".join(images)}; name them with --cameras '
                    'NAME=TOPIC'
                    if images
                    else ''
                )
            )
    else:
        cameras = [_requested_camera(item, topics, found) for item in requested]
    names = [c.name for c in cameras]
    for camera in cameras:
        if not _CAMERA_NAME.match(camera.name) or camera.name == 'names':
            raise ValueError(
                f'camera name {camera.name!r} (topic {camera.topic}) is not a valid node camera '
                'name (a letter, then letters, digits or underscores); pass --cameras NAME=TOPIC'
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f'several camera topics share the name(s) {duplicates}; choose with --cameras '
            'NAME=TOPIC'
        )
    return cameras


def _requested_camera(
    item: str, topics: Mapping[str, TopicInfo], found: Sequence[CameraSource]
) -> CameraSource:
    name, separator, topic = item.partition('=')
    if separator:
        info = topics.get(topic)
        if info is None or info.msgtype not in CAMERA_TYPES:
            raise ValueError(f'--cameras {item}: {topic} is not an Image/CompressedImage topic')
        transport = 'compressed' if info.msgtype == COMPRESSED_TYPE else 'raw'
        return CameraSource(name, topic, transport, '')
    if item.startswith('/'):
        match = [c for c in found if c.topic == item]
        if not match:
            raise ValueError(f'--cameras {item}: not a camera topic of the bag')
        return match[0]
    match = [c for c in found if c.name == item]
    if not match:
        known = ', '.join(f'{c.name} ({c.topic})' for c in found) or 'none'
        raise ValueError(f'--cameras {item}: no such camera in the bag; found: {known}')
    raw = [c for c in match if c.transport == 'raw']
    return (raw or match)[0]


def ground_truth_kinds(camera: CameraSource, topics: Mapping[str, TopicInfo]) -> tuple[str, ...]:
    """Ground-truth kinds present for `camera` (Image topics under `<prefix>/ground_truth/`)."""
    return tuple(
        kind
        for kind in GROUND_TRUTH_KINDS
        if topics.get(camera.ground_truth_topic(kind), TopicInfo('', '')).msgtype == IMAGE_TYPE
    )


def stamp_ns(header: Any) -> int:
    """Nanoseconds of a header stamp (rclpy or rosbags message)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
