"""ROS 2 layer of m2a_perception: the only package that imports rclpy and message packages.

Nothing here is imported by the core. Submodules: `conversions` (messages <-> numpy), `params`
(parameter specs -> settings), `slots` (latest-frame slots), `diagnostics`, `outputs`, `engine`,
`node` (the lifecycle node), `allocator` (malloc settings of the node process), `main` (entry
point) and `bench` (m2a-node-bench, the node's overhead benchmark). This `__init__` imports none
of them, so `m2a_perception.ros.rviz_config` stays usable from launch files without rclpy.
"""
