"""Models: VMamba (v2 and vanilla v0); each file registers its variants in the registry."""

from vmamba_jax.models import vmamba  # noqa: F401  (registers the VMamba variants)
from vmamba_jax.models import msvmamba  # noqa: F401  (registers the MSVMamba variants)
from vmamba_jax.models import resvmamba  # noqa: F401  (registers Res-VMamba)
from vmamba_jax.models import convnext  # noqa: F401  (registers the ConvNeXt baselines)
from vmamba_jax.models import swin  # noqa: F401  (registers the Swin baselines)
from vmamba_jax.models.registry import create_model, get_entry, list_models, model_kwargs  # noqa: F401
from vmamba_jax.models.ss2d import SS2D  # noqa: F401
from vmamba_jax.models.vmamba import VSSM, VSSBlock, VSSMBackbone  # noqa: F401
