"""Integrity of the bags m2a writes and reads: chunk CRCs, corrupt chunks, full disks.

Real bags from the packer, real damage (4 kB of random bytes in the middle of the file), a real
small file system (a tmpfs where the tests run as root; elsewhere ENOSPC raised at the storage
writer's `os.write`, which is what a full disk does there), read back with rosbags' AnyReader
and the mcap library, and the real `m2a-pack-bag` / `m2a-replay` entry points.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.records import Chunk
from mcap.stream_reader import StreamReader
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from m2a_perception.cli.pack_bag import main as pack_main
from m2a_perception.cli.replay import main as replay_main
from m2a_perception.pictures import read_rgb
from m2a_perception.ros.replay import mcap_io
from m2a_perception.ros.replay.bag import IMAGE_TYPE, RESERVE_NAME, BagReader, m2a_typestore
from m2a_perception.ros.replay.pack import PackOptions, pack_images

from ..disk import small_disk
from .conftest import live_domain, write_pngs

FRAME = (256, 512)  # 393 kB of rgb8: rosbags closes a chunk after three frames (> 1 MiB)
FRAMES = 7  # chunks of frames 0-2, 3-5 and 6
PERIOD_NS = 200_000_000
START_NS = 1_700_000_000 * 10**9


@pytest.fixture(scope='module')
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('frames')
    write_pngs(root, FRAMES, FRAME)
    return root


@pytest.fixture(scope='module')
def packed(frames, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('packed') / 'bag'
    pack_images(frames, path, options=PackOptions(rate_hz=5.0))
    return path


def storage_file(bag: Path) -> Path:
    (path,) = bag.glob('*.mcap')
    return path


def chunk_spans(path: Path) -> list[tuple[int, int]]:
    """(start offset, length) of every chunk, from the file's summary."""
    with path.open('rb') as stream:
        summary = make_reader(stream).get_summary()
    assert summary is not None
    return sorted((c.chunk_start_offset, c.chunk_length) for c in summary.chunk_indexes)


def corrupt_middle(bag: Path, destination: Path) -> tuple[Path, int]:
    """A copy of `bag` with 4 kB of random bytes in the middle of its storage file; the offset
    of the chunk they hit."""
    shutil.copytree(bag, destination)
    path = storage_file(destination)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = np.random.default_rng(0).bytes(4096)
    path.write_bytes(bytes(data))
    (hit,) = [start for start, length in chunk_spans(path) if start <= middle < start + length]
    return destination, hit


def test_packed_chunks_carry_their_crc(packed):
    with storage_file(packed).open('rb') as stream:
        chunks = [
            r for r in StreamReader(stream, emit_chunks=True).records if isinstance(r, Chunk)
        ]
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.compression == ''
        assert chunk.uncompressed_crc == zlib.crc32(chunk.data) != 0
    with storage_file(packed).open('rb') as stream:  # the mcap library checks them
        assert sum(1 for _ in make_reader(stream, validate_crcs=True).iter_messages()) == FRAMES
    with AnyReader([packed]) as reader:
        assert sum(1 for _ in reader.messages()) == FRAMES


def test_a_corrupt_chunk_is_skipped_reported_once_and_the_rest_is_read(packed, tmp_path, caplog):
    bag, offset = corrupt_middle(packed, tmp_path / 'corrupt')
    assert offset == chunk_spans(storage_file(bag))[1][0]  # frames 3-5
    with caplog.at_level(logging.WARNING), BagReader(bag) as reader:
        stamps = [m.log_time_ns for m in reader.messages()]
        (skipped,) = reader.skipped
    assert stamps == [START_NS + i * PERIOD_NS for i in (0, 1, 2, 6)]
    assert skipped.offset == offset and skipped.messages == {'/front/image': 3}
    assert skipped.reason.startswith('CRC mismatch')
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f'skipped chunk at offset {offset} of {storage_file(bag)}: {skipped.reason}; '
        '3 message(s) lost'
    ]
    # A standard reader sees the damage too, thanks to the CRC.
    with Reader(bag) as plain, pytest.raises(Exception, match='checksum'):
        list(plain.messages())


def test_damage_without_a_crc_is_caught_by_the_record_checks(tmp_path):
    """A bag from plain rosbags (CRC 0): a message record whose length leaves the chunk."""
    bag = tmp_path / 'plain'
    store = m2a_typestore()
    payload = bytes(400_000)
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection('/front/image', IMAGE_TYPE, typestore=store)
        for index in range(FRAMES):
            writer.write(connection, START_NS + index * PERIOD_NS, payload)
    path = storage_file(bag)
    start, _ = chunk_spans(path)[1]
    data = bytearray(path.read_bytes())
    # The chunk's records start after its 40-byte header (no compression name); the first is
    # a message record: opcode, then its u64 length.
    first_record = start + 9 + 40
    assert data[first_record] == 0x05
    data[first_record + 1 : first_record + 9] = (2**40).to_bytes(8, 'little')
    path.write_bytes(bytes(data))
    with BagReader(bag) as reader:
        assert len(list(reader.messages())) == FRAMES - 3
        (skipped,) = reader.skipped
    assert skipped.offset == start
    assert skipped.reason == f'record at chunk byte 0 claims {2**40} bytes'


def test_m2a_replay_counts_skipped_chunks_and_exits_3(
    packed, tiny_checkpoint, tmp_path, capsys, caplog
):
    bag, offset = corrupt_middle(packed, tmp_path / 'corrupt')
    out = tmp_path / 'out'
    common = ['--checkpoint', str(tiny_checkpoint), '--no-progress', '--threads', '1']
    assert replay_main([str(bag), '--out', str(out), *common]) == 3
    captured = capsys.readouterr()
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in logged if m.startswith('skipped chunk')] == [
        f'skipped chunk at offset {offset} of {storage_file(bag)}: '
        f'{json.loads((out / "replay_report.json").read_text())["skipped"][0]["reason"]}; '
        '3 message(s) lost'
    ]
    assert f'error: input bag {bag}: 1 corrupt chunk(s) skipped' in captured.err
    assert 'INPUT DAMAGED: skipped 1 corrupt chunk(s) with 3 message(s)' in captured.out
    report = json.loads((out / 'replay_report.json').read_text())
    assert (report['skipped_chunks'], report['skipped_messages']) == (1, 3)
    assert report['skipped'][0]['offset'] == offset
    assert report['frames_received'] == report['frames_processed'] == FRAMES - 3
    with AnyReader([out]) as reader:
        images = [c for c in reader.connections if c.topic == '/front/image']
        assert sum(1 for _ in reader.messages(connections=images)) == FRAMES - 3

    args = [str(bag), '--out', str(out), '--overwrite', *common, '--allow-skipped-chunks']
    assert replay_main(args) == 0


@contextlib.contextmanager
def full_disk(folder: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A file system of `size` bytes at `folder` (tmpfs), or ENOSPC past `size` bytes written
    through the mcap storage writer where mounting is not permitted."""
    with small_disk(folder, size) as disk:
        if disk is None:
            left = [size]
            write_all = mcap_io._write_all

            def limited(handle: int, data: memoryview) -> None:
                if len(data) > left[0]:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left[0] -= len(data)
                write_all(handle, data)

            monkeypatch.setattr(mcap_io, '_write_all', limited)
        yield folder


def no_space_line(err: str, bag: Path) -> int:
    """The one error line of a full disk; the number of messages it says the bag holds."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    match = re.fullmatch(
        rf'error: no space left on \S+ while writing {re.escape(str(bag))}; free some space and '
        r'retry \(the bag was closed and holds the (\d+) message\(s\) written before\)',
        lines[0],
    )
    assert match, lines[0]
    return int(match.group(1))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_m2a_pack_bag_on_a_full_disk_closes_a_readable_bag(
    frames, tmp_path, monkeypatch, capsys, storage
):
    if storage == 'sqlite3' and os.geteuid() != 0:
        pytest.skip('a full disk under SQLite needs a real small file system (root)')
    with full_disk(tmp_path / 'disk', 2 << 20, monkeypatch) as disk:
        out = disk / 'bag'
        args = [str(frames), '--out', str(out), '--fps', '5', '--storage', storage]
        assert pack_main(args) == 1
        written = no_space_line(capsys.readouterr().err, out)
        # The first chunk or transaction (three frames, > 1 MiB) fits in 2 MiB, the second not.
        assert written == 3
        assert not (out / RESERVE_NAME).exists()
        with AnyReader([out]) as reader:
            messages = [
                (stamp, reader.deserialize(raw, connection.msgtype))
                for connection, stamp, raw in reader.messages()
            ]
        assert [stamp for stamp, _ in messages] == [START_NS + i * PERIOD_NS for i in range(3)]
        for (_, image), path in zip(messages, sorted(frames.glob('*.png')), strict=False):
            pixels = image.data.reshape(image.height, image.width, 3)
            np.testing.assert_array_equal(pixels, read_rgb(path))


def test_m2a_replay_on_a_full_disk_closes_a_readable_output_bag(
    packed, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    with full_disk(tmp_path / 'disk', 2 << 20, monkeypatch) as disk:
        out = disk / 'out'
        common = ['--checkpoint', str(tiny_checkpoint), '--no-progress', '--threads', '1']
        assert replay_main([str(packed), '--out', str(out), *common]) == 1
        written = no_space_line(capsys.readouterr().err, out)
        assert written > 0
        assert not (out / RESERVE_NAME).exists()
        with AnyReader([out]) as reader:
            counts = {c.topic: c.msgcount for c in reader.connections}
            read = sum(1 for _ in reader.messages())
        assert read == sum(counts.values()) == written
        assert 0 < counts['/front/image'] < FRAMES


@pytest.mark.ros
def test_the_live_recorder_on_a_full_disk_closes_a_readable_bag(tmp_path):
    """The recorder process (as `m2a-replay --live` starts it) records 393 kB frames onto 2 MiB."""
    from m2a_perception.ros.processes import ros_environment

    from ..ros.helpers import camera_command, start_process

    with small_disk(tmp_path / 'disk', 2 << 20) as disk:
        if disk is None:
            pytest.skip('the recorder runs in its own process: needs a real small disk (root)')
        env = ros_environment({'ROS_DOMAIN_ID': live_domain()})
        out = disk / 'recorded'
        command = [sys.executable, '-m', 'm2a_perception.cli.bag_recorder', str(out)]
        recorder = subprocess.Popen(
            [*command, '--topics', '/front/image', '--duration', '60'],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        size = ('--height', str(FRAME[0]), '--width', str(FRAME[1]))
        camera_args = camera_command('--topic', '/front/image', *size, '--rate', '10')
        camera = start_process('camera', camera_args, tmp_path, env=env)
        try:
            output, _ = recorder.communicate(timeout=120)
        finally:
            camera.stop()
            if recorder.poll() is None:
                recorder.kill()
        assert recorder.returncode == 1, output
        summary = output.strip().splitlines()[-1]
        match = re.fullmatch(
            rf'recorder: no space left on \S+ while writing {re.escape(str(out))}; free some '
            r'space and retry \(the bag was closed and holds the (\d+) message\(s\) written '
            r'before\); wrote (\d+) message\(s\) on 1 topic\(s\) to .*',
            summary,
        )
        assert match and match.group(1) == match.group(2), summary
        with AnyReader([out]) as reader:
            assert sum(1 for _ in reader.messages()) == int(match.group(1)) > 0


# ------------------------------------------------------------------------ --overwrite


def old_bag(frames: Path, out: Path) -> int:
    """A previous bag at `out` (2 frames packed by the real CLI); its message count."""
    assert pack_main([str(frames), '--out', str(out), '--fps', '5', '--limit', '2']) == 0
    with AnyReader([out]) as reader:
        return sum(1 for _ in reader.messages())


def assert_old_bag_intact(out: Path, count: int) -> None:
    """`out` opens with rosbags with its old `count` messages; nothing is left beside it."""
    with AnyReader([out]) as reader:
        assert sum(1 for _ in reader.messages()) == count
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def unchanged_line(err: str, out: Path) -> None:
    lines = err.strip().splitlines()
    assert lines == [
        f'error: no space left on {lines[0].split()[5]} while writing {out}; free some space and '
        f'retry (the previous bag {out} is unchanged; the incomplete new one was deleted)'
    ], lines


def test_m2a_pack_bag_overwrite_on_a_full_disk_keeps_the_previous_bag(
    frames, tmp_path, monkeypatch, capsys
):
    # 2.5 MiB: the old bag (2 frames, 0.8 MB) and the new bag's first chunk fit, its second not.
    with full_disk(tmp_path / 'disk', 5 << 19, monkeypatch) as disk:
        out = disk / 'bag'
        count = old_bag(frames, out)
        capsys.readouterr()
        args = [str(frames), '--out', str(out), '--fps', '5', '--overwrite']
        assert pack_main(args) == 1
        unchanged_line(capsys.readouterr().err, out)
        assert_old_bag_intact(out, count)
        assert count == 2


def test_m2a_replay_overwrite_on_a_full_disk_keeps_the_previous_bag(
    frames, packed, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    with full_disk(tmp_path / 'disk', 5 << 19, monkeypatch) as disk:
        out = disk / 'out'
        count = old_bag(frames, out)
        capsys.readouterr()
        common = ['--checkpoint', str(tiny_checkpoint), '--no-progress', '--threads', '1']
        assert replay_main([str(packed), '--out', str(out), '--overwrite', *common]) == 1
        unchanged_line(capsys.readouterr().err, out)
        assert_old_bag_intact(out, count)


def test_overwrite_replaces_the_bag_only_once_the_new_one_is_complete(
    frames, tmp_path, monkeypatch
):
    from m2a_perception.ros.replay import pack

    out = tmp_path / 'bags' / 'bag'
    count = old_bag(frames, out)
    read = pack.read_rgb
    calls = [0]

    def interrupted(path: Path) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 5:  # Ctrl-C after the first chunk of the new bag was written
            raise KeyboardInterrupt
        return read(path)

    monkeypatch.setattr(pack, 'read_rgb', interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_main([str(frames), '--out', str(out), '--fps', '5', '--overwrite'])
    assert_old_bag_intact(out, count)

    monkeypatch.setattr(pack, 'read_rgb', read)
    assert pack_main([str(frames), '--out', str(out), '--fps', '5', '--overwrite']) == 0
    assert_old_bag_intact(out, FRAMES)  # replaced: the new count, no staging folder left
    assert pack_main([str(frames), '--out', str(out), '--fps', '5']) == 2  # no --overwrite
    not_a_bag = tmp_path / 'bags' / 'notes'
    not_a_bag.mkdir()
    (not_a_bag / 'todo.txt').write_text('keep me')
    assert pack_main([str(frames), '--out', str(not_a_bag), '--overwrite']) == 2
    assert (not_a_bag / 'todo.txt').read_text() == 'keep me'


@pytest.mark.ros
def test_m2a_replay_live_counts_skipped_chunks_and_exits_3(
    packed, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """The player process skips the corrupt chunk; the live report counts it as offline does."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # node, player and recorder inherit it
    monkeypatch.setenv('ROS_DOMAIN_ID', live_domain())
    bag, offset = corrupt_middle(packed, tmp_path / 'corrupt')
    out = tmp_path / 'out'
    common = ['--checkpoint', str(tiny_checkpoint), '--no-progress', '--live']
    assert replay_main([str(bag), '--out', str(out), *common]) == 3
    captured = capsys.readouterr()
    assert f'error: input bag {bag}: 1 corrupt chunk(s) skipped' in captured.err
    assert 'INPUT DAMAGED: skipped 1 corrupt chunk(s) with 3 message(s)' in captured.out
    report = json.loads((out / 'replay_report.json').read_text())
    assert report['mode'] == 'live'
    assert (report['skipped_chunks'], report['skipped_messages']) == (1, 3)
    assert report['skipped'][0]['offset'] == offset
    assert report['skipped'][0]['messages'] == {'/front/image': 3}
    assert report['frames_received'] == FRAMES - 3

    # Accepted, and replacing the first recording: the new one is swapped in complete.
    (out / 'replay_report.json').unlink()
    args = [str(bag), '--out', str(out), *common, '--overwrite', '--allow-skipped-chunks']
    assert replay_main(args) == 0
    assert json.loads((out / 'replay_report.json').read_text())['skipped_chunks'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['corrupt', 'out']
    with AnyReader([out]) as reader:
        images = [c for c in reader.connections if c.topic == '/front/image']
        assert sum(1 for _ in reader.messages(connections=images)) == FRAMES - 3


def test_m2a_replay_overwrite_interrupted_keeps_the_previous_bag(
    frames, packed, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from m2a_perception.ros.replay import offline

    out = tmp_path / 'bags' / 'out'
    count = old_bag(frames, out)
    capsys.readouterr()
    process = offline._Replayer.process
    calls = [0]

    def interrupted(self, *args, **kwargs):  # Ctrl-C at the third frame
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return process(self, *args, **kwargs)

    monkeypatch.setattr(offline._Replayer, 'process', interrupted)
    common = ['--checkpoint', str(tiny_checkpoint), '--no-progress', '--threads', '1']
    assert replay_main([str(packed), '--out', str(out), '--overwrite', *common]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'interrupted: the previous bag {out} is unchanged; the incomplete new one was deleted'
    )
    assert_old_bag_intact(out, count)
