"""Fixtures shared by the trainer tests. Opt-in, not autouse: `test_reproducible` varies the
number of threads itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope='module')
def single_thread() -> Iterator[None]:
    """One intra-op thread for a whole test module, restored afterwards.

    The tiny model is far too small to gain from intra-op threads; on a shared 2-core machine
    two threads spin against other processes and run ~10× slower. Module scope, so that the
    module's own module-scoped fixtures (worlds, training runs) run single-threaded too. Use it
    with `pytestmark = pytest.mark.usefixtures('single_thread')`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
