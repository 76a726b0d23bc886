"""ChannelLayerNorm: detectron2's channels-first LayerNorm ("LN") computed fused.

Same values and gradients as detectron2's ``LayerNorm``, less kept for backward, same state-dict keys, used by
every stock model config, and the configs still save to YAML and load back.
"""

import copy
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from detectron2.modeling.roi_heads import FastRCNNConvFCHead
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from hieradet.modeling import ChannelLayerNorm, channel_layer_norm
from hieradet.testing import make_tiny

ROOT = Path(__file__).resolve().parents[1]

# one stock config per model family (HieraDet FPN, fixed ViTDet SimpleFeaturePyramid, cascade heads, HiViT)
STOCK_CONFIGS = [
    "configs/COCO/mask_rcnn_hieradet_b_100ep.py",
    "configs/COCO/mask_rcnn_vitdet_b_100ep.py",
    "configs/COCO/cascade_mask_rcnn_hieradet_b_100ep.py",
    "projects/HiViT/configs/COCO/mask_rcnn_hivit_b_3x.py",
]


def _pair(channels, seed=0):
    torch.manual_seed(seed)
    ref = D2LayerNorm(channels)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = ChannelLayerNorm(channels)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _forward_backward(norm, x, dy):
    x = x.clone().requires_grad_(True)
    norm.zero_grad()
    y = norm(x)
    y.backward(dy)
    return y.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 7, 1, 9), (1, 3, 13, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_detectron2_layernorm_values_and_grads(shape, dtype):
    ref, ours = _pair(shape[1])
    ref, ours = ref.to(dtype), ours.to(dtype)
    x = (torch.randn(shape) * 3 + 1).to(dtype)  # offset and scale: the centring matters
    dy = torch.randn(shape).to(dtype)
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b, name in zip(_forward_backward(ref, x, dy), _forward_backward(ours, x, dy), ("y", "dx", "dw", "db")):
        torch.testing.assert_close(b, a, **tol, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():  # the inference path
        torch.testing.assert_close(ours(x), ref(x), **tol)
    assert ours(x).is_contiguous()  # NCHW out, as detectron2's


def test_low_precision_input_gives_detectron2s_dtypes():
    # as under autocast: bfloat16 activations, float32 parameters -> a float32 output, a bfloat16 input gradient
    ref, ours = _pair(6)
    x = torch.randn(2, 6, 5, 7).bfloat16()
    dy = torch.randn(2, 6, 5, 7)
    for a, b in zip(_forward_backward(ref, x, dy), _forward_backward(ours, x, dy)):
        assert b.dtype == a.dtype
        torch.testing.assert_close(b, a, rtol=2e-2, atol=5e-2)  # both normalise in bfloat16


def test_keeps_only_its_input_and_statistics_for_backward():
    shape = (2, 16, 24, 20)
    ref, ours = _pair(shape[1])
    params = {p.untyped_storage().data_ptr() for m in (ref, ours) for p in m.parameters()}

    def kept(norm):
        x = torch.randn(shape, requires_grad=True)
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = norm(x)
        y.sum().backward()  # the graph is usable
        return sum(v for k, v in sizes.items() if k not in params), x.numel() * x.element_size()

    ours_bytes, x_bytes = kept(ours)
    ref_bytes, _ = kept(ref)
    stats = 2 * shape[0] * shape[2] * shape[3] * 4  # mean and rstd, (N, 1, H, W) fp32
    assert ours_bytes <= x_bytes + stats
    assert ref_bytes >= 3 * x_bytes  # detectron2's keeps three full-size intermediates


def test_same_state_dict_keys_and_outputs_as_detectron2_ln_head():
    torch.manual_seed(0)
    shape = ShapeSpec(channels=8, height=7, width=7)
    ref = FastRCNNConvFCHead(shape, conv_dims=[8, 8], fc_dims=[16], conv_norm="LN")
    ours = FastRCNNConvFCHead(shape, conv_dims=[8, 8], fc_dims=[16], conv_norm=ChannelLayerNorm)
    assert list(ours.state_dict()) == list(ref.state_dict())  # e.g. conv1.norm.weight, no conv bias
    ours.load_state_dict(ref.state_dict())  # a checkpoint written with "LN" loads unchanged (strict)
    assert isinstance(ours.conv1.norm, ChannelLayerNorm) and isinstance(ours.conv1.norm, D2LayerNorm)
    x = torch.randn(5, 8, 7, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_cause():
    norm = ChannelLayerNorm(8)
    with pytest.raises(ValueError, match=r"input \(2, 6, 3, 3\), weight \(8,\).*channel count"):
        norm(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match="number of channels as a positive int"):
        ChannelLayerNorm((8,))
    with pytest.raises(ValueError, match=r"\(N, C, \.\.\.\)"):
        channel_layer_norm(torch.randn(8), torch.ones(8), torch.zeros(8))


def _norm_values(node, path="model"):
    """(path, value) of every ``norm`` / ``conv_norm`` entry in a LazyConfig tree."""
    if hasattr(node, "items"):
        for k, v in node.items():
            if k in ("norm", "conv_norm"):
                yield f"{path}.{k}", v
            yield from _norm_values(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
        for i, v in enumerate(node):
            yield from _norm_values(v, f"{path}[{i}]")


@pytest.mark.parametrize("config", STOCK_CONFIGS)
def test_stock_configs_use_it_in_the_pyramid_and_heads(config):
    model = LazyConfig.load(str(ROOT / config)).model
    found = dict(_norm_values(model))
    neck_heads = {k: v for k, v in found.items() if k.startswith(("model.backbone.norm", "model.roi_heads"))}
    assert "model.backbone.norm" in neck_heads and any("mask_head" in k for k in neck_heads)
    assert any("box_head" in k for k in neck_heads)
    wrong = {k: v for k, v in neck_heads.items() if v is not ChannelLayerNorm}
    assert not wrong, f"{config}: norms that are not ChannelLayerNorm: {wrong}"


def test_stock_config_builds_it_and_saves_to_yaml_and_back(tmp_path):
    cfg = LazyConfig.load(str(ROOT / STOCK_CONFIGS[0]))
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))  # what default_setup writes into the output dir
    assert path.exists() and not (tmp_path / "config.yaml.pkl").exists()  # YAML, not the pickle fallback
    back = LazyConfig.load(str(path))
    assert dict(_norm_values(back.model)) == dict(_norm_values(cfg.model))

    make_tiny(back, image_size=64, num_classes=3)
    model = instantiate(back.model)
    names = [n for n, m in model.named_modules() if isinstance(m, ChannelLayerNorm)]
    assert "backbone.fpn_lateral2.norm" in names and "backbone.fpn_output5.norm" in names
    assert "roi_heads.box_head.conv1.norm" in names and "roi_heads.mask_head.mask_fcn1.norm" in names
    others = [n for n, m in model.named_modules() if isinstance(m, D2LayerNorm) and n not in names]
    assert not others, f"detectron2 LayerNorms left: {others}"


def _with_detectron2_ln(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.norm = "LN"
    rh = cfg.model.roi_heads
    for head in rh.box_heads if "box_heads" in rh else [rh.box_head]:
        head.conv_norm = "LN"
    rh.mask_head.conv_norm = "LN"
    return cfg


@pytest.mark.parametrize("config", [STOCK_CONFIGS[0], "configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py"])
def test_tiny_detector_matches_the_detectron2_ln_one(config):
    cfg = make_tiny(LazyConfig.load(str(ROOT / config)), image_size=64, num_classes=3)
    torch.manual_seed(0)
    ours = instantiate(cfg.model)
    with torch.no_grad():  # non-trivial affine parameters
        for name, p in ours.named_parameters():
            if ".norm." in name and not name.startswith("backbone.bottom_up") and not name.startswith("backbone.net"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    ref = instantiate(_with_detectron2_ln(cfg).model)
    ref.load_state_dict(ours.state_dict())  # strict: same keys
    predictors = lambda m: getattr(m.roi_heads, "box_predictors", None) or [m.roi_heads.box_predictor]  # noqa: E731
    for p in predictors(ours) + predictors(ref):
        p.test_score_thresh = 0.0
    image = torch.randint(0, 256, (3, 64, 64)).float()
    gt = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[5.0, 10.0, 40.0, 45.0]])), gt_classes=torch.tensor([1]))
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:45, 5:40] = True
    gt.gt_masks = BitMasks(masks)
    with torch.no_grad():
        a, b = (m.eval()([dict(image=image)])[0]["instances"] for m in (ours, ref))
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-4)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    with EventStorage():
        losses = []
        for m in (ours, ref):
            torch.manual_seed(1)
            loss = m.train()([dict(image=image, instances=gt)])
            sum(loss.values()).backward()
            losses.append(loss)
    for k in losses[1]:
        torch.testing.assert_close(losses[0][k], losses[1][k], rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    for n, p in ours.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_exports_and_traces_to_the_same_values():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), ChannelLayerNorm(8)).eval()
    with torch.no_grad():
        model[1].weight.normal_()
        model[1].bias.normal_()
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        ref = model(x)
    ep = torch.export.export(model, (x,), strict=False)  # as hieradet.export does; parameters need grad
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.mean.dim" in targets and not any("autograd" in t.lower() for t in targets)
    torch.testing.assert_close(ep.module()(x), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compiles_and_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), ChannelLayerNorm(8))
    x = torch.randn(2, 3, 9, 11)
    y_ref, *grads_ref = _forward_backward_module(model, x)
    y_c, *grads_c = _forward_backward_module(torch.compile(model), x)
    for a, b in zip([y_ref] + grads_ref, [y_c] + grads_c):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    path = tmp_path / "norm.onnx"
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), y_ref, rtol=1e-5, atol=1e-5)


def _forward_backward_module(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    norm = [m for m in model.modules() if isinstance(m, ChannelLayerNorm)][0]
    return y.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()
