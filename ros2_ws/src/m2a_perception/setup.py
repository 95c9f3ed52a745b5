"""ament_python package m2a_perception: the Mask2Anomaly model core and the ROS 2 node.

Launch files and YAML live once, at the repository root (`launch/`, `config/`); this package
reaches them through its `launch` and `config` symlinks to those folders, so every data file
path below is inside the package. colcon (also `--symlink-install` with any `--build-base`)
then writes only into its build and install bases; `..`-relative data files would make it
mirror them outside the build base.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = 'm2a_perception'
HERE = Path(__file__).resolve().parent


def _share_files(subdir: str, pattern: str) -> list[str]:
    # Relative to this file and inside it: colcon resolves data files from the package folder.
    return sorted(path.relative_to(HERE).as_posix() for path in (HERE / subdir).glob(pattern))


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    # The TensorRT ONNX operator support matrix read by deploy/tensorrt_ops.py.
    package_data={PACKAGE: ['deploy/*.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', _share_files('launch', '*.launch.py')),
        (
            f'share/{PACKAGE}/config',
            _share_files('config', '*.yaml')
            + _share_files('config', '*.rviz')
            + _share_files('config', '*.xml'),
        ),
        (f'share/{PACKAGE}/config/model', _share_files('config/model', '*.yaml')),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=False,
    maintainer='m2a developers',
    maintainer_email='dev@m2a.invalid',
    description='Mask2Anomaly open-set perception: model core and ROS 2 node.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'm2a-convert-checkpoint = m2a_perception.cli.convert_checkpoint:main',
            'm2a-export = m2a_perception.cli.export:main',
            'm2a-bench = m2a_perception.cli.bench:main',
            'm2a-infer = m2a_perception.cli.infer:main',
            'm2a-metrics-bench = m2a_perception.cli.metrics_bench:main',
            'm2a-build-engine = m2a_perception.cli.build_engine:main',
            'm2a-doctor = m2a_perception.cli.doctor:main',
            # The ROS node: `ros2 run m2a_perception perception_node`, or without ROS tooling.
            'perception_node = m2a_perception.cli.perception_node:main',
            'm2a-perception-node = m2a_perception.cli.perception_node:main',
            'm2a-node-bench = m2a_perception.cli.node_bench:main',
            'm2a-replay = m2a_perception.cli.replay:main',
            'm2a-pack-bag = m2a_perception.cli.pack_bag:main',
            # Used by launch/replay_eval.launch.py (play a bag into the node, record its outputs).
            'bag_player = m2a_perception.cli.bag_player:main',
            'bag_recorder = m2a_perception.cli.bag_recorder:main',
        ],
    },
)
