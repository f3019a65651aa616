"""The multimodal models' forward pass in numpy alone: the vision encoder, then the text decoder's engine.

A served multimodal generation stage runs where torch is not (the worker image has none), like the text family.
The decoder of :class:`~paretoserve.workers.llm.vision.MultimodalLM` IS the text family's, with visual tokens
ahead of the text; so :class:`MultimodalEngine` is :class:`~paretoserve.workers.llm.engine.NumpyLM` (the same
transformer forward, the same batched decode step and KV cache) plus the vision encoder in numpy, whose visual
tokens it hands to :meth:`NumpyLM.prefill` as a prefix of embeddings: each request's KV cache holds them too.
The weights are the ``weights.npz`` :func:`~paretoserve.workers.llm.vision.export_multimodal` writes (the torch
``state_dict``, the decoder's and the encoder's, plus :data:`MM_CONFIG_KEY`). Its greedy answers equal torch's.

:class:`MultimodalConfig` lives here, not beside the torch model, because it is the contract both sides share: it
travels inside ``weights.npz`` and says how many visual tokens a request's prompt holds. numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.llm.config import CONFIG_KEY, FLOAT32_BYTES, ModelConfig
from paretoserve.workers.llm.engine import Floats, KVCache, NumpyLM, _gelu

IMAGE_SIZE = 8
"""The digits images are 8x8."""
MM_CONFIG_KEY = "__mm_config__"
"""The ``weights.npz`` entry holding the :class:`MultimodalConfig` as JSON."""
INPUT_IMAGE = "IMAGE"
"""The served model's image input (FP32, ``image_size``² pixel values in 0..1, row-major)."""


@dataclass(frozen=True)
class MultimodalConfig:
    """A decoder (its :class:`ModelConfig`) and the patch size of its vision encoder."""

    decoder: ModelConfig
    patch: int
    image_size: int = IMAGE_SIZE

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"patch {self.patch} does not tile a {self.image_size}x{self.image_size} image")

    @property
    def name(self) -> str:
        return self.decoder.name

    @property
    def visual_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def image_values(self) -> int:
        """Pixel values of one image (the served ``IMAGE`` input's length)."""
        return self.image_size * self.image_size

    def kv_bytes_per_token(self, dtype_bytes: int = FLOAT32_BYTES) -> int:
        return self.decoder.kv_bytes_per_token(dtype_bytes)

    def kv_bytes_per_request(self, text_tokens: int, dtype_bytes: int = FLOAT32_BYTES) -> int:
        """KV-cache memory of one request holding ``text_tokens`` text tokens plus its visual tokens."""
        return (self.visual_tokens + text_tokens) * self.kv_bytes_per_token(dtype_bytes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MultimodalConfig:
        fields: dict[str, Any] = json.loads(text)
        return cls(decoder=ModelConfig(**fields.pop("decoder")), **fields)


def image_pixels(values: npt.ArrayLike, image_size: int = IMAGE_SIZE) -> Floats:
    """One request's image as ``[S, S]`` float32, from ``S*S`` values (any shape holding exactly them, e.g. the
    served ``IMAGE`` ``[64]``); ``ValueError`` naming ``IMAGE`` for another count or non-finite values."""
    array = np.asarray(values, dtype=np.float32)
    if array.size != image_size * image_size:
        raise ValueError(f"{INPUT_IMAGE} must hold {image_size * image_size} values (an {image_size}x{image_size} "
                         f"image, row-major), got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{INPUT_IMAGE} holds non-finite values")
    pixels: Floats = array.reshape(image_size, image_size)
    return pixels


class MultimodalEngine(NumpyLM):
    """:class:`NumpyLM` whose requests start with the visual tokens of an image (see the module doc)."""

    def __init__(self, config: MultimodalConfig, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        if config.decoder.max_len < config.visual_tokens + 1:
            raise ValueError(f"max_len {config.decoder.max_len} leaves no room after {config.visual_tokens} "
                             "visual tokens")
        super().__init__(config.decoder, weights)
        self.mm_config = config

        def linear(name: str) -> tuple[Floats, Floats]:
            weight = np.ascontiguousarray(np.asarray(weights[f"vision.{name}.weight"], dtype=np.float32).T)
            return weight, np.asarray(weights[f"vision.{name}.bias"], dtype=np.float32)

        self.embed_w, self.embed_b = linear("embed")
        self.mix_w, self.mix_b = linear("mix")

    @classmethod
    def load(cls, path: Path) -> MultimodalEngine:
        """The engine of an exported multimodal ``weights.npz`` (no pickle)."""
        with np.load(path, allow_pickle=False) as archive:
            if MM_CONFIG_KEY not in archive.files:
                raise ValueError(f"{path} holds no {MM_CONFIG_KEY}: not a multimodal model's weights")
            config = MultimodalConfig.from_json(str(archive[MM_CONFIG_KEY]))
            weights = {name: archive[name] for name in archive.files if name != MM_CONFIG_KEY}
        return cls(config, weights)

    @property
    def visual_tokens(self) -> int:
        return self.mm_config.visual_tokens

    def patches(self, image: npt.ArrayLike) -> Floats:
        """``[S, S]`` (or ``S*S`` values) -> ``[V, patch*patch]``: non-overlapping patches, row-major."""
        size, patch = self.mm_config.image_size, self.mm_config.patch
        grid = size // patch
        cut = image_pixels(image, size).reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
        flat: Floats = np.ascontiguousarray(cut.reshape(grid * grid, patch * patch))
        return flat

    def encode_image(self, image: npt.ArrayLike) -> Floats:
        """The visual tokens ``[V, d_model]`` of one image: each patch through ``Linear-GELU-Linear``."""
        tokens: Floats = _gelu(self.patches(image) @ self.embed_w + self.embed_b) @ self.mix_w + self.mix_b
        return tokens

    def prefill_image(self, image: npt.ArrayLike, prompt_ids: Sequence[int]) -> tuple[Floats, KVCache]:
        """One image and its prompt in one pass: the logits of the last position and the cache of all
        ``V + len(prompt_ids)`` positions."""
        return self.prefill(prompt_ids, prefix=self.encode_image(image))

    def generate_multimodal(self, images: Sequence[npt.ArrayLike], prompts: Sequence[Sequence[int]],
                            max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding as :meth:`NumpyLM.generate`, each prompt after its image's visual tokens."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        return self.generate(prompts, max_new_tokens, prefixes=[self.encode_image(image) for image in images])


def load_engine(path: Path) -> NumpyLM:
    """The numpy engine of any exported ``weights.npz``: a :class:`MultimodalEngine` when it holds
    :data:`MM_CONFIG_KEY`, else the text family's :class:`NumpyLM`."""
    with np.load(path, allow_pickle=False) as archive:
        names = set(archive.files)
    if MM_CONFIG_KEY in names:
        return MultimodalEngine.load(path)
    if CONFIG_KEY in names:
        return NumpyLM.load(path)
    raise ValueError(f"{path} holds neither {CONFIG_KEY} nor {MM_CONFIG_KEY}: not an exported generation model")
