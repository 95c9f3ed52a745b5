"""`Segmenter`: pre-processing -> backend -> post-processing, the one object every consumer calls.

The ROS node, the rosbag replay, evaluation and `m2a-infer` all go through it, so they produce the
same outputs for the same frame. The three stages are also public methods so that callers can
time them separately (the node's `InferenceStats`).

Allowed dependencies: numpy, torch, and the core modules (`inference`, `preprocess`,
`postprocess`, `weights`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from m2a_perception.config import ModelConfig, PreprocessConfig
from m2a_perception.inference import TorchBackend
from m2a_perception.model import Mask2Anomaly
from m2a_perception.postprocess import PostprocessConfig, postprocess, predict_with_flip
from m2a_perception.postprocess.config import check_instance_head
from m2a_perception.preprocess import Preprocessor, PreprocessRecord
from m2a_perception.types import NetworkOutput, SegmentationOutput, instance_embedding_of
from m2a_perception.weights import load_checkpoint


@dataclass(frozen=True)
class Prediction:
    """Network output for one pre-processed batch, on the backend's device.

    Attributes:
        class_logits: (B, Q, K+1) float32.
        mask_logits: (B, Q, H/4, W/4) float32.
        flipped: the pass on the mirrored source image, as the network returned it (same
            shapes; `postprocess` flips it back at output resolution), or None.
        instance_embedding: (B, 4L, H/4, W/4) float32 centroid embeddings of the plain pass from
            a model with the instance head, or None.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    flipped: NetworkOutput | None = None
    instance_embedding: torch.Tensor | None = None


class Segmenter:
    """Open-set segmentation of RGB frames.

    Args:
        backend: callable (B, 3, H, W) normalised padded images -> `NetworkOutput`,
            e.g. `TorchBackend`; if it has a `device` attribute, pre-processing runs there.
        preprocess_config: resize/normalise settings of the model (`ModelConfig.preprocess`).
        postprocess_config: post-processing settings; `flip` doubles the backend calls.
        device: where to pre-process when the backend has no `device` attribute.
    """

    def __init__(
        self,
        backend: Callable[[torch.Tensor], NetworkOutput],
        preprocess_config: PreprocessConfig,
        postprocess_config: PostprocessConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.backend = backend
        self.preprocessor = Preprocessor(preprocess_config)
        self.postprocess_config = postprocess_config or PostprocessConfig()
        backend_device = getattr(backend, 'device', None)
        self.device = torch.device(device or backend_device or 'cpu')

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = 'cpu',
        postprocess_config: PostprocessConfig | None = None,
        precision: str = 'fp32',
    ) -> Segmenter:
        """Load an m2a checkpoint into a `TorchBackend` and wrap it.

        Raises:
            CheckpointError: for missing, corrupt or untrained checkpoints.
        """
        model, config = load_checkpoint(path, device)
        return cls.from_model(model, config, device, postprocess_config, precision)

    @classmethod
    def from_model(
        cls,
        model: Mask2Anomaly,
        config: ModelConfig,
        device: torch.device | str = 'cpu',
        postprocess_config: PostprocessConfig | None = None,
        precision: str = 'fp32',
    ) -> Segmenter:
        """Wrap an in-memory model (tests, training-time evaluation) in a `TorchBackend`.

        Raises:
            ValueError: the post-processing needs the instance head (`mining_split:
                centroid_head`) and the model has none.
        """
        check_instance_head(
            postprocess_config or PostprocessConfig(), config.instance_head.enabled
        )
        backend = TorchBackend(model, device, precision)
        return cls(backend, config.preprocess, postprocess_config)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, PreprocessRecord]:
        """(H, W, 3) uint8 RGB -> (1, 3, H', W') network input on `self.device`, and its record.

        The input has the backend's `input_dtype`: normalised float32, or uint8 for graphs that
        normalise inside (no uint8 -> float -> uint8 round trip).
        """
        dtype = getattr(self.backend, 'input_dtype', torch.float32)
        return self.preprocessor(image, self.device, dtype)

    def infer(
        self,
        images: torch.Tensor,
        record: PreprocessRecord | None = None,
        config: PostprocessConfig | None = None,
    ) -> Prediction:
        """Run the backend; twice, on the mirrored source too, when the config's `flip` is set.

        `config` (default `postprocess_config`) is per call: callers that vary it per frame
        pass it here instead of changing the shared segmenter.

        Raises:
            ValueError: flip is on and no `record` is given (the flip needs the geometry).
        """
        config = config or self.postprocess_config
        with torch.inference_mode():
            if config.flip:
                if record is None:
                    raise ValueError('the flipped pass needs the pre-processing record')
                plain, flipped = predict_with_flip(self.backend, images, record)
                return Prediction(
                    plain.class_logits, plain.mask_logits, flipped, instance_embedding_of(plain)
                )
            outputs = self.backend(images)
            return Prediction(
                outputs.class_logits, outputs.mask_logits, None, instance_embedding_of(outputs)
            )

    def postprocess(
        self,
        prediction: Prediction,
        record: PreprocessRecord,
        index: int = 0,
        config: PostprocessConfig | None = None,
    ) -> SegmentationOutput:
        """Outputs of image `index` of the batch, on the backend's device (`config` as in
        `infer`)."""
        flipped = None
        if prediction.flipped is not None:
            flipped = NetworkOutput(
                prediction.flipped.class_logits[index], prediction.flipped.mask_logits[index]
            )
        embedding = prediction.instance_embedding
        with torch.inference_mode():
            return postprocess(
                prediction.class_logits[index],
                prediction.mask_logits[index],
                record,
                config or self.postprocess_config,
                flipped,
                instance_embedding=None if embedding is None else embedding[index],
            )

    def __call__(self, image: np.ndarray) -> SegmentationOutput:
        """Segment one (H, W, 3) uint8 RGB frame; maps stay on the backend's device."""
        images, record = self.preprocess(image)
        return self.postprocess(self.infer(images, record), record)
