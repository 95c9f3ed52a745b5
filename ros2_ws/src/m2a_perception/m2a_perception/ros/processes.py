"""ROS child processes: their environment, the node's command line, and process groups that
always die.

One implementation for the live replay, the node benchmark and the multi-process tests. Each
child runs in its own process group (`start_new_session`), so stopping it SIGINTs and, if need
be, SIGKILLs the whole group: no grandchild outlives the caller.

Plain standard library (no rclpy): the launch-file planner and the tests import it without
starting ROS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NODE_MODULE = 'm2a_perception.cli.perception_node'
"""The node's entry point (`python -m`), what the console script `m2a-perception-node` runs."""


def ros_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of ROS child processes.

    Fast DDS large-data transport (multi-MB images across processes), unbuffered and uncoloured
    output, and the ROS wheels' loader variables kept together: the bootstrapper's marker without
    its LD_LIBRARY_PATH breaks `import rclpy` (shared/reference/environment.md §0, §3). `extra`
    is applied last.
    """
    env = dict(os.environ)
    env.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    if 'LD_LIBRARY_PATH' not in env:
        env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)
    env.update(extra or {})
    return env


def parameter_overrides(values: Mapping[str, Any]) -> list[str]:
    """`name:=value` strings for `-p` (values as JSON, which ROS parses as YAML)."""
    return [
        f'{name}:={json.dumps(list(value) if isinstance(value, tuple) else value)}'
        for name, value in values.items()
    ]


def perception_node_arguments(
    *, namespace: str = '', params_file: Path | None = None, overrides: Sequence[str] = ()
) -> list[str]:
    """The node's ROS arguments (`--ros-args ...`), for any of its executables.

    Args:
        namespace: node namespace ('' keeps the root namespace).
        params_file: a parameter YAML passed with `--params-file`.
        overrides: `name:=value` strings, each passed with `-p` after the file (they win).
    """
    arguments = ['--ros-args']
    if namespace:
        arguments += ['-r', f'__ns:={namespace}']
    if params_file is not None:
        arguments += ['--params-file', str(params_file)]
    for override in overrides:
        arguments += ['-p', override]
    return arguments


def perception_node_command(
    *, namespace: str = '', params_file: Path | None = None, overrides: Sequence[str] = ()
) -> list[str]:
    """Command line of the perception node in this Python environment (arguments as
    `perception_node_arguments`)."""
    arguments = perception_node_arguments(
        namespace=namespace, params_file=params_file, overrides=overrides
    )
    return [sys.executable, '-m', NODE_MODULE, *arguments]


class ManagedProcess:
    """A child process in its own process group, its output in a log file.

    Args:
        name: for messages and log tails.
        command: the command line.
        log_path: file that receives stdout and stderr; None inherits the caller's.
        env: environment (default: this process's).
        cwd: working directory (default: this process's).
        pipe: read stdout as text through `process.stdout` instead (the log then holds only
            what the caller writes with `write_log`).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        pipe: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open('w') if log_path is not None else None
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE if pipe else self._log,
            stderr=subprocess.STDOUT if self._log is not None or pipe else None,
            text=pipe,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGINT the group, SIGKILL it if it has not exited within `timeout_s`; close the log.

        Safe to call again. Returns the exit status (negative: killed by that signal).
        """
        if self.alive():
            self._signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10.0)
        self._signal(signal.SIGKILL)  # no grandchildren may outlive the caller
        self.close()
        return self.process.returncode

    def close(self) -> None:
        """Close the log file (the process keeps running)."""
        if self._log is not None and not self._log.closed:
            self._log.close()

    def write_log(self, text: str) -> None:
        """Append caller-read output (with `pipe`) to the log."""
        if self._log is not None and not self._log.closed:
            self._log.write(text)
            self._log.flush()

    def log_text(self) -> str:
        """Everything logged so far ('' without a log file)."""
        if self.log_path is None:
            return ''
        if self._log is not None and not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def tail(self, lines: int = 15) -> str:
        """The last `lines` log lines, each prefixed with the process name, for error messages."""
        text = self.log_text().splitlines()
        return '\n'.join(f'    {self.name}| {line}' for line in text[-lines:])

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
