"""ROS child processes: their environment, the node's command line, and process groups that
always die.

One implementation for the live replay, the node benchmark and the multi-process tests. Each
child runs in its own process group (`start_new_session`), so stopping it SIGINTs and, if need
be, SIGKILLs the whole group: no grandchild outlives the caller.

Plain standard library and `m2a_perception.config` (no rclpy): the launch files, the replay
planner and the tests import it without starting ROS.
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

from m2a_perception.config import config_search_path

NODE_MODULE = 'm2a_perception.cli.perception_node'
"""The node's entry point (`python -m`), what the console script `m2a-perception-node` runs."""


LARGE_FRAMES_PROFILE = 'fastdds_large_frames.xml'
"""The shipped Fast DDS profile for multi-MB frames (config/, installed into share/config/)."""
# The profile's variable: Fast DDS 3.x (Kilted on; ROS package `fastdds`) reads only the first,
# Fast DDS 2.x (Humble, Jazzy: 2.6, 2.14; ROS package `fastrtps`) only the second. Under the wrong
# name a distro silently runs the default transports and loses best-effort multi-MB frames.
FAST_DDS_PROFILE_VARIABLES = {
    'fastdds': 'FASTDDS_DEFAULT_PROFILES_FILE',
    'fastrtps': 'FASTRTPS_DEFAULT_PROFILES_FILE',
}
PROFILE_VARIABLES = tuple(FAST_DDS_PROFILE_VARIABLES.values())
EXIT_WITH_PARENT_VARIABLE = 'M2A_EXIT_WITH_PARENT'
"""Set to 1 by whatever starts the node as its child (launch files, `m2a-replay --live`, the
tests): the node then ends when that parent dies (`cli/perception_node.py`)."""


def large_frames_profile() -> Path:
    """The shipped large-frame profile: the first `config_search_path()` folder that has it.

    Raises:
        FileNotFoundError: no searched folder holds it (a broken install).
    """
    for folder in config_search_path():
        if (folder / LARGE_FRAMES_PROFILE).is_file():
            return folder / LARGE_FRAMES_PROFILE
    searched = ', '.join(str(folder) for folder in config_search_path())
    raise FileNotFoundError(f'Fast DDS profile {LARGE_FRAMES_PROFILE} not found in: {searched}')


def profile_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The variable(s) under which this ROS install's Fast DDS reads its XML profile.

    The first ament prefix (`AMENT_PREFIX_PATH`, then this Python's prefix, i.e. a venv of
    ROS wheels) with a `share/fastdds` or `share/fastrtps` folder decides. Kilted's rmw also
    reads the 2.x name, but warns on every start that it is deprecated, so it gets only its
    own. With neither folder found, both names.
    """
    prefixes = [Path(p) for p in environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    for prefix in [*prefixes, Path(sys.prefix)]:
        for package, variable in FAST_DDS_PROFILE_VARIABLES.items():
            if (prefix / 'share' / package).is_dir():
                return (variable,)
    return PROFILE_VARIABLES


def large_frames_environment(
    profile: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment that makes this install's Fast DDS load `profile` (default: the shipped
    large-frame profile), under `profile_variables(environ)` (default `os.environ`).

    One definition for the launch files, the live replay, the node benchmark and the tests; it
    replaces FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, which loses multi-MB frames under
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
    """
    path = str(large_frames_profile() if profile is None else profile)
    return dict.fromkeys(profile_variables(os.environ if environ is None else environ), path)


def large_frames_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to `environ` for multi-MB frames: `large_frames_environment()`, or nothing
    when `environ` names a Fast DDS profile already (the user's own wins)."""
    if any(environ.get(name) for name in PROFILE_VARIABLES):
        return {}
    return large_frames_environment(environ=environ)


def ros_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of ROS child processes.

    The shipped Fast DDS large-frame profile (multi-MB images across processes, any discovery
    range) unless the caller's environment names a profile already, unbuffered and uncoloured
    output, `M2A_EXIT_WITH_PARENT` (a node child ends with this process), and the ROS wheels'
    loader variables kept together: the bootstrapper's marker without its LD_LIBRARY_PATH
    breaks `import rclpy` (shared/reference/environment.md §0, §3). `extra` is applied last.
    """
    env = dict(os.environ)
    env.update(large_frames_defaults(env))
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    env[EXIT_WITH_PARENT_VARIABLE] = '1'
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
