"""vmamba-jax: VMamba-family vision backbones in JAX/Flax (channel-last), with Pallas selective-scan kernels.

    import vmamba_jax
    model = vmamba_jax.create_model("vmamba_tiny_s1l8")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    logits = model.apply(variables, images)            # images: (N, H, W, 3) float, ImageNet-normalised
"""

from vmamba_jax.models import SS2D, VSSM, VSSBlock, VSSMBackbone, create_model, list_models  # noqa: F401
from vmamba_jax.analysis.flops import count_params, flops  # noqa: F401

__version__ = "0.1.0"
