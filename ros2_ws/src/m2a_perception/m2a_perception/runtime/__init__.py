"""ROS-free runtime pieces shared by the node, the replay and the command-line tools.

- `loader`: the one backend loader (`BackendSpec` -> `load_backend` / `build_segmenter`, one
  `BackendError`), engines opened only through their sidecars;
- `slots`: per-camera latest-frame slots and the round-robin hand-off to the inference worker;
- `throttle`: keyed log throttling;
- `report`: the replay report (latencies, frame counters, metrics) as text and JSON.

Allowed dependencies: torch, numpy, the core. Never rclpy, message packages or `m2a_training`.
"""
