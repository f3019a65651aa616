"""The digits model variants ParetoServe serves: architectures, deterministic training, cache.

Variants of increasing cost (``tiny_linear`` < ``mlp_small`` < ``cnn_small`` < ``cnn_large``) plus
``discriminator``, which predicts whether ``tiny_linear`` is wrong. :func:`ensure_trained` returns
the cached catalog (training it once if needed, and exporting each variant to the ONNX graph Triton
serves); :func:`load_variant` and :func:`predict` run a variant offline in torch.
"""

from paretoserve.workers.models.architectures import ARCHITECTURES, IMAGE_SHAPE, build_module
from paretoserve.workers.models.cache import (
    CACHE_ENV,
    ModelCatalog,
    VariantMetadata,
    catalog_version,
    default_cache_root,
    ensure_trained,
    open_catalog,
)
from paretoserve.workers.models.runtime import export_onnx, load_variant, predict, read_metadata
from paretoserve.workers.models.training import (
    DEFAULT_SPLIT,
    RECIPES,
    DigitsSplit,
    SplitSpec,
    TrainingRecipe,
    load_split,
)
from paretoserve.workers.triton.variant_engine import Prediction

__all__ = [
    "ARCHITECTURES",
    "CACHE_ENV",
    "DEFAULT_SPLIT",
    "IMAGE_SHAPE",
    "RECIPES",
    "DigitsSplit",
    "ModelCatalog",
    "Prediction",
    "SplitSpec",
    "TrainingRecipe",
    "VariantMetadata",
    "build_module",
    "catalog_version",
    "default_cache_root",
    "ensure_trained",
    "load_split",
    "export_onnx",
    "load_variant",
    "open_catalog",
    "predict",
    "read_metadata",
]
