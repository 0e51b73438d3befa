"""An LLM encoder on a mesh of 8 fake CPU devices (Qwen2.5-VL with images: the shared decoder and the vision
tower): parameters laid out by the rules (heads over `tensor`, width over `fsdp`), loaded by slices, and the
same hidden states as on one device."""

import transformers
from jax.sharding import PartitionSpec as P

from jdiff import sharding as sh
from jdiff.models.qwen2_5_vl import text_encoder as qwen_vl
from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from jdiff.models.qwen2_5_vl.plan import SPEC as QWEN_VL_SPEC
from jdiff.parallel.mesh import make_mesh
from jdiff.parallel.placement import Placement
from jdiff.weights.loading import load_component
from tests import parity
from tests.models.qwen2_5_vl.test_text_encoder import PROCESSOR, _images, _prompt, _ref_config
from tests.utils import needs_8_devices

pytestmark = needs_8_devices


def _sharded(spec, cfg, folder, placement):
    _, state = spec.abstract(cfg)
    return load_component(spec, folder, shardings=placement.shardings(state))[1]


def test_qwen2_5_vl_sharded_matches_one_device(tmp_path):
    cfg = Qwen2_5_VLConfig.tiny()
    ref = parity.randomized(transformers.Qwen2_5_VLForConditionalGeneration(_ref_config(cfg)))
    ref.save_pretrained(tmp_path)
    grid = qwen_vl.image_grid(_images(), PROCESSOR)
    ids, mask = _prompt(cfg, [(1, 4), (1, 9)], grid)
    kw = dict(images=_images(), processor=PROCESSOR)
    want = qwen_vl.encode(load_component(QWEN_VL_SPEC, tmp_path)[1], cfg, ids, mask, **kw)
    placement = Placement(make_mesh("tensor=2,fsdp=4"))
    model = _sharded(QWEN_VL_SPEC, cfg, tmp_path, placement)
    assert model.model.visual.blocks.attn.qkv.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    attn = model.model.language_model.layers.self_attn
    assert attn.k_proj.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    assert attn.o_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")
    with placement.context():
        batch = (sh.BATCH, sh.LENGTH)
        got = qwen_vl.encode(model, cfg, placement.put(ids, batch), placement.put(mask, batch), **kw)
    assert len(got.sharding.device_set) == 8
    parity.assert_close(got, want)
