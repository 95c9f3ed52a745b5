"""m2a_perception: Mask2Anomaly open-set segmentation for road vehicles.

The model core (`config`, `model`, `preprocess`, `weights`, `export`) depends only on the
standard library, numpy, torch, safetensors, Pillow and PyYAML. It never imports rclpy, message
packages, TensorRT or `m2a_training`; the ROS layer (`m2a_perception.ros`) is a thin adapter on
top of it.
"""

__version__ = '0.1.0'
