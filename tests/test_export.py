"""Export of the backbone features to torch.export (.pt2) and ONNX: one file, dynamic H and W, equal to eager at two
sizes; bad input is refused with a message naming the cause."""

import pytest
import torch
from detectron2.config import instantiate
from omegaconf import OmegaConf

from hieradet.export import (
    FeatureGraph,
    check_exported,
    export_features,
    export_model,
    load_exported,
)
from hieradet.testing import tiny_mask_rcnn

SIZES = [(256, 256), (224, 320)]  # one file, two sizes (224 px: a single stage-3 window row)


def _model(kind):
    torch.manual_seed(0)
    return instantiate(tiny_mask_rcnn(kind, img_size=256)).eval()


def _parity(kind, fmt, tmp_path, atol):
    model = _model(kind)
    path = export_features(model, fmt, str(tmp_path), max_size=320)
    torch.manual_seed(1)
    images = [torch.rand(3, *hw) * 255 for hw in SIZES]
    graph = FeatureGraph(model).eval()
    run = load_exported(path, 320)
    for image in images:
        with torch.no_grad():
            eager = graph(image)
        out = run(image)
        assert len(out) == len(eager) == len(graph.output_names)
        for name, a, b in zip(graph.output_names, out, eager):
            assert a.shape == b.shape, f"{name} at {tuple(image.shape)}"
            torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=f"{kind} {fmt} {name} {tuple(image.shape)}")
    return path, model, images, run


@pytest.fixture(scope="module")
def hieradet_pt2(tmp_path_factory):
    """One .pt2 export of a tiny HieraDet Mask R-CNN's features (the one export of the default suite)."""
    return _parity("hieradet", "torch_export", tmp_path_factory.mktemp("pt2"), atol=1e-5)


def test_torch_export_features_two_sizes_one_file_hieradet(hieradet_pt2):
    path, model, images, run = hieradet_pt2  # the fixture asserted eager parity at both sizes
    assert path.endswith("model.pt2")
    diffs = check_exported(run, model, images, 320)
    assert len(diffs) == 2 and all(max(d.values()) < 1e-5 for d in diffs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "hivit"])
def test_torch_export_features_two_sizes_one_file(kind, tmp_path):
    _parity(kind, "torch_export", tmp_path, atol=1e-5)


@pytest.mark.slow
def test_onnx_features_two_sizes_one_file_hieradet(tmp_path):
    path = _parity("hieradet", "onnx", tmp_path, atol=1e-3)[0]
    import onnx

    m = onnx.load(path)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 3 and dims[1].dim_param and dims[2].dim_param  # H and W symbolic


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "hivit"])
def test_onnx_features_two_sizes_one_file(kind, tmp_path):
    _parity(kind, "onnx", tmp_path, atol=1e-3)


def test_exported_rejects_wrong_shape_dtype_and_size(hieradet_pt2):
    pt2_runner = hieradet_pt2[3]
    with pytest.raises(ValueError, match=r"\(3, H, W\) image"):
        pt2_runner(torch.rand(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"\(3, H, W\) image"):
        pt2_runner(torch.rand(256, 256, 3))
    with pytest.raises(ValueError, match="float32"):
        pt2_runner(torch.rand(3, 256, 256).double())
    with pytest.raises(ValueError, match="outside the exported range"):
        pt2_runner(torch.rand(3, 256, 384))


def test_export_refuses_unknown_format_and_file(tmp_path):
    cfg = OmegaConf.create({"model": tiny_mask_rcnn("hieradet", img_size=256)})
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(cfg, None, "tflite", str(tmp_path), backbone_only=True)
    with pytest.raises(ValueError, match="unknown exported file"):
        load_exported(str(tmp_path / "model.tflite"))


def test_export_refuses_missing_checkpoint(tmp_path):
    cfg = OmegaConf.create({"model": tiny_mask_rcnn("hieradet", img_size=256)})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        export_model(cfg, str(tmp_path / "none.pth"), "torch_export", str(tmp_path / "out"), backbone_only=True)


def test_feature_graph_pads_to_square_like_detectron2():
    from detectron2.structures import ImageList

    model = _model("vit")
    model.backbone._square_pad = 256  # SimpleFeaturePyramid's square_pad, as the stock ViTDet configs set it
    graph = FeatureGraph(model).eval()
    assert graph.square_size == 256
    image = torch.rand(3, 224, 160) * 255
    with torch.no_grad():
        ours = graph(image)
        batch = ImageList.from_tensors(
            [(image - model.pixel_mean) / model.pixel_std],
            model.backbone.size_divisibility,
            padding_constraints=model.backbone.padding_constraints,
        ).tensor
        ref = model.backbone(batch)
    assert batch.shape[-2:] == (256, 256)
    for name, a in zip(graph.output_names, ours):
        torch.testing.assert_close(a, ref[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceeds the backbone's square_pad=256"):
        export_features(model, "torch_export", "unused", max_size=320)


@pytest.mark.parametrize("mode", ["abswin", "abswin_single", "interpolate"])
def test_pos_embed_bicubic_under_bf16_autocast(mode):
    from hieradet.modeling.pos_embed import AbsWinPosEmbed

    torch.manual_seed(0)
    pe = AbsWinPosEmbed(16, pretrain_size=14, window_size=4, global_size=7, mode=mode)
    ref = pe((40, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pe((40, 24))
        bf16 = pe.embed((40, 24)).to(torch.bfloat16)  # a bf16 grid through the bicubic resize
    assert out.shape == ref.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    grid = pe.global_embed.detach().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        resized = torch.nn.functional.interpolate(grid, size=(40, 24), mode="bicubic", align_corners=False)
    assert torch.isfinite(resized).all() and torch.isfinite(bf16).all()


def test_backbone_forward_under_bf16_autocast():
    model = _model("hieradet")
    x = torch.rand(3, 224, 160) * 255
    graph = FeatureGraph(model).eval()
    with torch.no_grad():
        ref = graph(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = graph(x)
    for name, a, b in zip(graph.output_names, out, ref):
        assert torch.isfinite(a).all()
        err = (a.float() - b).norm() / b.norm()
        assert err < 0.05, f"{name}: relative error {err:.3g} in bf16"


def test_export_names_the_extra_and_checks_the_example_size(tmp_path, monkeypatch):
    model = _model("hieradet")
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # as if the export extra were not installed
    with pytest.raises(ImportError, match=r"hieradet\[export\]"):
        export_features(model, "onnx", str(tmp_path), max_size=320)
    assert not (tmp_path / "model.onnx").exists()
    with pytest.raises(ValueError, match=r"example size \(64, 512\) must lie in"):
        export_features(model, "torch_export", str(tmp_path), example_hw=(64, 512), max_size=320)
