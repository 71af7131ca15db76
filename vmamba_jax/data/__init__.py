"""Input pipeline: Grain sources, per-image transforms, on-device mixup/cutmix, the embedded digits dataset."""

from vmamba_jax.data.digits import digits_source  # noqa: F401
from vmamba_jax.data.mixup import mixup_cutmix, smooth_one_hot  # noqa: F401
from vmamba_jax.data.pipeline import check_classes, eval_dataset, train_dataset  # noqa: F401
from vmamba_jax.data.sources import (ArrayRecordSource, ArraySource, DecodedSource, ImageFolderSource,  # noqa: F401
                                     TfdsSource, decode_in_memory)
from vmamba_jax.data.transforms import EvalTransform, TrainTransform  # noqa: F401
