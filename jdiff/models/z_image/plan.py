"""Conversion plan: diffusers `ZImageTransformer2DModel` -> jdiff `ZImageTransformer2DModel`.

Reference quirk: diffusers keeps the patch embedder and the final layer in `ModuleDict`s keyed by
"{patch}-{frame patch}" (`all_x_embedder.2-1`, `all_final_layer.2-1`), one entry per supported patch size;
the released models have the one (2, 1) entry, which is all the config accepts. Everything else mirrors
diffusers' names; the three block lists are stacked.
"""

from jdiff.models.z_image.config import ZImageConfig
from jdiff.models.z_image.transformer import ZImageTransformer2DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(
    rules=(
        Rule(r"x_embedder\.kernel", "all_x_embedder.2-1.weight", "torch_kernel"),
        Rule(r"x_embedder\.bias", "all_x_embedder.2-1.bias"),
        Rule(r"final_layer\.(.+)\.kernel", r"all_final_layer.2-1.\1.weight", "torch_kernel"),
        Rule(r"final_layer\.(.+)\.bias", r"all_final_layer.2-1.\1.bias"),
        Rule(r"(x_pad_token|cap_pad_token)", r"\1"),
    ),
    stacked=("noise_refiner", "context_refiner", "layers"),
)

# fp8 (quantization="fp8"): the attention and feed-forward linears of the main layers and both refiners;
# their `adaLN_modulation`, the embedders and the final layer stay as they are.
FP8 = (r"(layers|noise_refiner|context_refiner)\.(?!adaLN_modulation\.).+",)
SPEC = ComponentSpec("ZImageTransformer2DModel", ZImageConfig, ZImageTransformer2DModel, PLAN, fp8=FP8)
