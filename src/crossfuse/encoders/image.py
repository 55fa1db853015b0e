"""Image encoders: a small CNN trained from scratch and any torchvision backbone."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from crossfuse.encoders.base import ENCODERS, Encoder
from crossfuse.errors import ConfigError, require
from crossfuse.layers import ConvStack

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@ENCODERS.register("small_cnn")
class SmallCNN(Encoder):
    """Stages of ``convs`` Conv-BN-ReLU blocks with max-pooling, then average pooling to a
    ``pool`` x ``pool`` grid, flattened (``pool: 1`` is global average pooling); for training from
    scratch. A grid keeps where in the image a pattern was, which small centred images such as
    digits need."""

    modality = "image"

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256), image_size: int = 32, dropout: float = 0.0,
                 convs: int = 1, pool: int = 1):
        super().__init__()
        if isinstance(convs, bool) or not isinstance(convs, int) or not 1 <= convs <= 8:
            raise ConfigError(f"small_cnn: 'convs' (conv blocks per stage) must be an integer in [1, 8]; got {convs!r}")
        if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= 16:
            raise ConfigError(f"small_cnn: 'pool' (side of the pooled grid) must be an integer in [1, 16]; got {pool!r}")
        self._init_kwargs = {"channels": list(channels), "image_size": image_size, "dropout": dropout, "convs": convs,
                             "pool": pool}
        self.net = ConvStack(3, channels, convs)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = self.net.output_dim * pool * pool
        self.data_config = {"input_size": [3, image_size, image_size], "mean": [0.5] * 3, "std": [0.5] * 3}

    def forward_sequence(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The last feature map as (B, H*W, channels) patch tokens, all valid."""
        seq = self.dropout(self.net(x).flatten(2).transpose(1, 2))
        return seq, torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.net(x)).flatten(1))


class TorchvisionEncoder(Encoder):
    """Any torchvision classification model with its classifier's last layer removed.

    Weights: ``weights`` names a torchvision weight enum ("DEFAULT", "IMAGENET1K_V1"; downloaded
    on first use, so online only), or ``weights_path`` points to a local .safetensors/.pth file
    holding the model's state dict. With neither, the network starts from random init.
    """

    modality = "image"
    default_arch: str = "resnet18"
    source_params = ("weights", "weights_path")

    def __init__(
        self,
        arch: Optional[str] = None,
        weights: Optional[str] = None,
        weights_path: Optional[str] = None,
        trainable: bool = True,
        unfreeze_last: Optional[int] = None,
        image_size: Optional[int] = None,
    ):
        super().__init__()
        import torchvision

        arch = arch or self.default_arch
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"Unknown torchvision model '{arch}'. See torchvision.models.list_models().")
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
        enum = None
        if weights is not None:
            enum = torchvision.models.get_model_weights(arch)[weights] if weights != "DEFAULT" else \
                torchvision.models.get_model_weights(arch).DEFAULT
            t = enum.transforms()
            mean, std, size = tuple(t.mean), tuple(t.std), int(t.crop_size[0])
        model = torchvision.models.get_model(arch, weights=enum)
        if weights_path is not None:
            load_state_dict_file(model, weights_path)
        self.backbone = _strip_classifier(model)
        size = image_size or size
        self._init_kwargs = {"arch": arch, "trainable": trainable, "unfreeze_last": unfreeze_last, "image_size": size}
        self.data_config = {"input_size": [3, size, size], "mean": list(mean), "std": list(std)}
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            self.output_dim = int(self.backbone(torch.zeros(1, 3, size, size)).shape[-1])
        self.backbone.train(was_training)
        self.set_trainable(self.backbone, trainable, unfreeze_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)


def _strip_classifier(model: nn.Module) -> nn.Module:
    """Replace the final classification layer with Identity so the model emits features."""
    for attr in ("fc", "classifier", "head", "heads"):
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        if isinstance(layer, nn.Sequential):
            linear_idx = [i for i, m in enumerate(layer) if isinstance(m, nn.Linear)]
            if linear_idx:
                layer[linear_idx[-1]] = nn.Identity()
                return model
    raise ConfigError(f"Cannot find the classifier of {type(model).__name__} to remove it")


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    result = model.load_state_dict(state, strict=False)
    own = set(model.state_dict())
    if not own & set(state):
        raise ConfigError(f"{path} holds no weights of {type(model).__name__} (no parameter names match)")
    if result.missing_keys:
        import warnings

        warnings.warn(f"{path}: {len(result.missing_keys)} parameters not in the file keep their init, "
                      f"e.g. {result.missing_keys[:3]}")


def _register_torchvision(name: str) -> None:
    cls = type(f"TV_{name}", (TorchvisionEncoder,), {"default_arch": name, "__doc__": f"torchvision {name}."})
    ENCODERS.register(name)(cls)


ENCODERS.register("torchvision")(TorchvisionEncoder)
for _name in ("alexnet", "vgg11", "vgg16", "resnet18", "resnet50", "mobilenet_v3_small",
              "mobilenet_v3_large", "efficientnet_b0"):
    _register_torchvision(_name)



@ENCODERS.register("timm")
class TimmEncoder(Encoder):
    """Any timm model as a feature extractor (``num_classes=0``: pooled features).

    ``arch``: a timm model name. Weights: ``weights_path`` (a local .safetensors/.pth/.bin state
    dict, loaded by timm without pickled code) or ``pretrained: true`` (timm downloads them, online
    only). The input size, mean and std come from timm's data config for the model.
    Needs ``pip install 'crossfuse[timm]'``.
    """

    modality = "image"
    source_params = ("weights_path", "pretrained")

    def __init__(self, arch: str = "resnet18", weights_path: Optional[str] = None, pretrained: bool = False,
                 trainable: bool = True, unfreeze_last: Optional[int] = None, image_size: Optional[int] = None):
        super().__init__()
        timm = require("timm", "timm", "The timm image encoder")
        if weights_path is not None and not Path(weights_path).is_file():
            raise ConfigError(f"Weights file not found: {weights_path}")
        try:
            self.backbone = timm.create_model(arch, pretrained=pretrained, num_classes=0,
                                              checkpoint_path=weights_path or None)
        except RuntimeError as exc:  # timm raises RuntimeError for unknown names
            raise ConfigError(f"timm cannot build '{arch}': {exc}") from exc
        dc = timm.data.resolve_model_data_config(self.backbone)
        size = image_size or int(dc["input_size"][-1])
        self._init_kwargs = dict(arch=arch, trainable=trainable, unfreeze_last=unfreeze_last, image_size=size)
        self.data_config = {"input_size": [3, size, size], "mean": list(dc["mean"]), "std": list(dc["std"])}
        self.output_dim = int(self.backbone.num_features)
        self.set_trainable(self.backbone, trainable, unfreeze_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
