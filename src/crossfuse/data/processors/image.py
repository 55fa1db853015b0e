"""Image processor: decode, resize, normalise with the backbone's mean/std, augment when training."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from crossfuse.data.anonymize import find_faces, hide_faces
from crossfuse.data.processors.base import FileProcessor, is_blank, limit, resolve_path, stack_present
from crossfuse.errors import MissingDependencyError

MAX_SIDE = 4096  # the largest input size a model may ask images to be resized to
# our own decompression-bomb limit, below Pillow's (which lets a 144-megapixel image through, to be
# decoded in full every epoch); the processor parameter ``max_pixels`` changes it
MAX_PIXELS = 64_000_000


def pixel_problem(size: Tuple[int, int], max_pixels: int = MAX_PIXELS) -> Optional[str]:
    """Why an image of ``size`` (width, height, from its header) is refused, or None."""
    w, h = size
    if w * h > max_pixels:
        return f"{w} x {h} = {w * h:,} pixels is over the limit of {max_pixels:,} (processor parameter max_pixels)"
    return None


def open_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode fully (truncated files fail here, not mid-epoch); transparency goes onto white.
    An image over ``max_pixels`` is refused from its header, before anything is decoded."""
    with Image.open(path) as img:
        problem = pixel_problem(img.size, max_pixels)
        if problem:
            raise ValueError(problem)
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


class ImageProcessor(FileProcessor):
    """Params: ``size`` (int), ``mean``/``std`` (3 floats), default from the encoder's data config;
    ``augment``: {hflip: bool, crop: float (min scale of a random resized crop), rotation: degrees,
    translate: float (largest shift, as a fraction of the side), erase: float (probability of
    erasing a random rectangle)};
    ``max_pixels``: larger images are bad items (default 64 million);
    ``faces``: blur or box the faces OpenCV finds as each image is loaded (data.anonymize sets it).
    """

    kind = "image"
    default_encoder = "small_cnn"
    tile = "image"
    extensions = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    noun = "image"
    corruptions = {"noise": [0.25, 0.5, 1.0, 2.0], "occlusion": [0.1, 0.25, 0.5, 0.75]}

    def configure(self, encoder: Any) -> None:
        dc = encoder.data_config or {}
        self.params.setdefault("size", int(dc.get("input_size", [3, 224, 224])[-1]))
        self.params.setdefault("mean", list(dc.get("mean", [0.485, 0.456, 0.406])))
        self.params.setdefault("std", list(dc.get("std", [0.229, 0.224, 0.225])))
        self.params.setdefault("augment", {})

    def check(self, df, base_dir: Path, open_files: bool, allow_outside: bool = False):
        if self.params.get("faces"):  # a missing OpenCV fails here, before training, not in a loader
            find_faces(np.zeros((32, 32, 3), np.uint8))
        return super().check(df, base_dir, open_files, allow_outside)

    def probe(self, path: Path, open_files: bool) -> Optional[str]:
        if not open_files:
            return None
        try:
            open_image(path, self.max_pixels)
        except Exception as exc:  # PIL raises many types for bad files
            return f"cannot read image {path}: {type(exc).__name__}: {exc}"
        return None

    @property
    def max_pixels(self) -> int:
        return int(self.params.get("max_pixels") or MAX_PIXELS)

    def limit_problems(self) -> List[str]:
        problems = limit(self.params, "size", 1, MAX_SIDE) + limit(self.params, "max_pixels", 1, 10 ** 10)
        if self.params.get("faces") not in (None, "blur", "box"):
            problems.append(f"'faces' must be blur, box or null; got {self.params['faces']!r}")
        for key in ("mean", "std"):
            v = self.params.get(key)
            if v is not None and (not isinstance(v, list) or len(v) != 3
                                  or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                problems.append(f"'{key}' must be 3 numbers; got {v!r}")
        if isinstance(self.params.get("std"), list) and any(
                isinstance(x, (int, float)) and x <= 0 for x in self.params["std"]):
            problems.append(f"'std' must be > 0; got {self.params['std']!r}")
        return problems

    def _transform(self, train: bool):
        from torchvision.transforms import v2

        size = self.params["size"]
        aug = self.params.get("augment") or {}
        steps: list = [v2.ToImage()]
        if train and aug.get("crop"):
            steps.append(v2.RandomResizedCrop(size, scale=(float(aug["crop"]), 1.0), antialias=True))
        else:
            steps.append(v2.Resize((size, size), antialias=True))
        if train and aug.get("hflip"):
            steps.append(v2.RandomHorizontalFlip())
        if train and aug.get("rotation"):
            steps.append(v2.RandomRotation(float(aug["rotation"])))
        if train and aug.get("translate"):
            t = float(aug["translate"])
            steps.append(v2.RandomAffine(degrees=0, translate=(t, t)))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.params["mean"], self.params["std"])]
        if train and aug.get("erase"):
            steps.append(v2.RandomErasing(p=float(aug["erase"])))
        return v2.Compose(steps)

    def load(self, row: Dict[str, Any], base_dir: Path, train: bool) -> Optional[torch.Tensor]:
        value = row[self.column]
        if is_blank(value):
            return None
        key = "_train_tf" if train else "_eval_tf"
        if not hasattr(self, key):
            setattr(self, key, self._transform(train))
        try:
            image = open_image(resolve_path(value, base_dir), self.max_pixels)
            if self.params.get("faces"):
                image = Image.fromarray(hide_faces(np.asarray(image), self.params["faces"])[0])
            return getattr(self, key)(image)
        except MissingDependencyError:
            raise
        except Exception as exc:  # the file changed after validation: treat as missing, do not crash
            warnings.warn(f"{value}: unreadable image treated as missing ({exc})")
            return None

    def collate(self, items: List[Optional[torch.Tensor]]):
        size = self.params["size"]
        return stack_present(items, (3, size, size))

    def linear_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The pixels, average-pooled to at most 32 x 32 per channel."""
        side = min(32, int(inputs.shape[-1]))
        return torch.nn.functional.adaptive_avg_pool2d(inputs.float(), side).flatten(1)

    def corrupt(self, inputs: torch.Tensor, name: str, strength: float, generator: torch.Generator) -> torch.Tensor:
        """noise: Gaussian noise of std ``strength`` in normalised units; occlusion: a random square
        covering ``strength`` of the image set to 0 (the mean colour after normalisation)."""
        if name == "noise":
            return inputs + torch.randn(inputs.shape, generator=generator).to(inputs) * strength
        if name == "occlusion":
            out = inputs.clone()
            b, _, h, w = out.shape
            side_h, side_w = int(round(h * strength ** 0.5)), int(round(w * strength ** 0.5))
            for i in range(b):
                y = int(torch.randint(0, h - side_h + 1, (1,), generator=generator))
                x = int(torch.randint(0, w - side_w + 1, (1,), generator=generator))
                out[i, :, y:y + side_h, x:x + side_w] = 0
            return out
        return super().corrupt(inputs, name, strength, generator)

    def __getstate__(self):  # transforms are rebuilt lazily in each worker
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_tf")}
