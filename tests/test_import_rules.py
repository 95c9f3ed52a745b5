"""The import rules of the repository, checked over every module of both Python packages.

Read statically from the source (every `import`, also those inside functions), so a rule holds
for code paths no test happens to run:

- the model core (`m2a_perception` outside `ros/` and `cli/`) imports neither rclpy, ROS message
  or launch packages, nor `m2a_training`, nor `m2a_perception.ros`;
- `m2a_training` imports nothing from `m2a_perception.ros`;
- no library module imports a CLI module: the CLI modules are the application layer
  (`m2a_perception.cli`, which may import anything in its package, and `m2a_training.cli`, which
  may import the training library, the core and the shared vocabulary `m2a_perception.cli.args`);
- every console script of setup.py and pyproject.toml is a `main` in one of those CLI packages;
- the module-level imports between first-party modules have no cycle.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from .entry_points import console_scripts

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = {
    'm2a_perception': REPO_ROOT / 'ros2_ws' / 'src' / 'm2a_perception' / 'm2a_perception',
    'm2a_training': REPO_ROOT / 'training' / 'm2a_training',
}
# Top-level names of rclpy, the ROS message packages and the launch system.
ROS_PACKAGES = frozenset(
    {
        'rclpy',
        'rcl_interfaces',
        'rosgraph_msgs',
        'builtin_interfaces',
        'std_msgs',
        'sensor_msgs',
        'diagnostic_msgs',
        'lifecycle_msgs',
        'm2a_perception_msgs',
        'launch',
        'launch_ros',
        'ament_index_python',
        'rosbag2_py',
    }
)
# Violations that other work removes; the lead empties this set once that work is merged.
# (importer, imported first-party module)
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOTS[package]).with_suffix('').parts
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join((package, *parts))


def all_modules() -> dict[str, Path]:
    """Every first-party module name -> its file."""
    return {
        module_name(package, path): path
        for package, root in PACKAGE_ROOTS.items()
        for path in sorted(root.rglob('*.py'))
    }


MODULES = all_modules()


def imports_of(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """Modules `path` imports: first-party ones resolved to the deepest existing module, others
    by their top-level name. `top_level_only` leaves out imports inside functions (run on
    call, so they cannot form an import-time cycle); `if TYPE_CHECKING:` and `try:` blocks at
    module or class level count."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found: set[str] = set()
    for node in _import_nodes(path, top_level_only):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[: len(anchor) - node.level + 1]
                base = '.'.join([*anchor, base] if base else anchor)
            targets = [f'{base}.{alias.name}' for alias in node.names] + [base]
        found.update(_resolve(target) for target in targets)
    found.discard(name)
    return found


@functools.cache
def _import_nodes(path: Path, top_level_only: bool) -> tuple[ast.Import | ast.ImportFrom, ...]:
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        if top_level_only and isinstance(node, functions):
            continue
        pending.extend(ast.iter_child_nodes(node))
    return tuple(found)


def _resolve(target: str) -> str:
    if target.split('.')[0] not in PACKAGE_ROOTS:
        return target.split('.')[0]
    while target not in MODULES and '.' in target:
        target = target.rpartition('.')[0]
    return target


CLI_PACKAGES = ('m2a_perception.cli', 'm2a_training.cli')
# What the training entry points may use of the perception CLI package.
SHARED_CLI_MODULE = 'm2a_perception.cli.args'


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + '.')


def is_core(name: str) -> bool:
    return in_package(name, 'm2a_perception') and not (
        in_package(name, 'm2a_perception.ros') or in_package(name, 'm2a_perception.cli')
    )


def is_cli(name: str) -> bool:
    return any(in_package(name, package) for package in CLI_PACKAGES)


def violations() -> list[str]:
    found = []
    for name, path in MODULES.items():
        for imported in sorted(imports_of(name, path, top_level_only=False)):
            if (name, imported) in KNOWN_VIOLATIONS:
                continue
            if is_core(name) and (
                imported in ROS_PACKAGES
                or in_package(imported, 'm2a_training')
                or in_package(imported, 'm2a_perception.ros')
            ):
                found.append(f'core module {name} imports {imported}')
            if in_package(name, 'm2a_training') and in_package(imported, 'm2a_perception.ros'):
                found.append(f'training module {name} imports {imported}')
            if not is_cli(name) and is_cli(imported):
                found.append(f'library module {name} imports the CLI module {imported}')
            training_cli = in_package(name, 'm2a_training.cli')
            if (
                training_cli
                and in_package(imported, 'm2a_perception.cli')
                and imported not in (SHARED_CLI_MODULE, 'm2a_perception.cli')
            ):
                found.append(
                    f'training CLI module {name} imports {imported} (only {SHARED_CLI_MODULE})'
                )
    return found


def import_cycles() -> list[list[str]]:
    """Cycles of module-level imports between first-party modules (Tarjan's SCCs)."""
    graph = {
        name: sorted(i for i in imports_of(name, path, top_level_only=True) if i in MODULES)
        for name, path in MODULES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_the_pipeline_loads_without_optional_heavy_packages():
    # At run time, not only statically: the per-frame path never pulls in torchvision or
    # matplotlib (m2a-infer imports matplotlib only to draw a legend).
    modules = ['classes', 'types', 'postprocess', 'pipeline', 'visualize']
    code = (
        'import sys\n'
        + ''.join(f'import m2a_perception.{name}\n' for name in modules)
        + "bad = [m for m in sys.modules if m.split('.')[0] in "
        + "('rclpy', 'm2a_training', 'torchvision', 'matplotlib')]\n"
        + 'assert not bad, bad\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_every_module_is_checked():
    # Both packages, all their sub-packages: the rules do not depend on a sampled list.
    assert 'm2a_perception.ros.node' in MODULES and 'm2a_training.trainer' in MODULES
    assert len(MODULES) == sum(len(list(r.rglob('*.py'))) for r in PACKAGE_ROOTS.values())


def test_layering_rules_hold_for_every_module():
    assert violations() == []


def test_every_entry_point_is_a_cli_module():
    scripts = console_scripts()
    assert {'m2a-replay', 'perception_node', 'bag_player', 'm2a-eval', 'm2a-train'} <= set(scripts)
    outside = {
        name: target for name, target in scripts.items() if not is_cli(target.split(':')[0])
    }
    assert outside == {}
    for target in scripts.values():
        module, function = target.split(':')
        assert module in MODULES and function == 'main', target


def test_no_import_cycles():
    assert import_cycles() == []


@pytest.mark.parametrize(
    ('name', 'code', 'expected'),
    [
        ('m2a_perception.metrics.fake', 'import rclpy', 'core module'),
        ('m2a_perception.pipeline', 'from m2a_training.trainer import Trainer', 'core module'),
        ('m2a_training.fake', 'from m2a_perception.ros import node', 'training module'),
        ('m2a_perception.deploy.fake', 'def f():\n    from ..cli import args', 'CLI module'),
        ('m2a_perception.ros.fake', 'from m2a_perception.cli.replay import main', 'CLI module'),
        ('m2a_training.fake', 'from m2a_training.cli.evaluate import main', 'CLI module'),
        ('m2a_perception.metrics.fake', 'from m2a_perception.ros import topics', 'core module'),
        ('m2a_training.cli.fake', 'from m2a_perception.cli import replay', 'training CLI'),
    ],
)
def test_the_rules_catch_a_violation(tmp_path, monkeypatch, name, code, expected):
    path = tmp_path / 'fake.py'
    path.write_text(code + '\n')
    monkeypatch.setitem(MODULES, name, path)
    assert any(expected in line for line in violations())
