"""Converted reference checkpoints reproduce the reference models (random weights, no downloads).

Each test builds a source model with its reference package, randomises the parameters that are
zero- or near-zero-initialised (position embeddings, timm's layer scale), saves it the way the
published checkpoints are saved, converts the file with ``tools/convert_checkpoint.py`` and loads
the result into our backbone.
"""

import pytest
import torch
from conftest import load_tool_module

from hieradet.checkpoint import METADATA_KEY, load_backbone_checkpoint
from hieradet.modeling import HieraDet
from hieradet.modeling.pos_embed import tile_embed
from hieradet.modeling.vit import ViT

convert_checkpoint = load_tool_module("convert_checkpoint")


def _convert(tmp_path, source_obj, name, *extra):
    src = tmp_path / f"{name}_src.pth"
    out = tmp_path / f"{name}.pth"
    torch.save(source_obj, src)
    assert convert_checkpoint.main([str(src), str(out), *extra]) == 0
    return out, torch.load(out, weights_only=True)


def _backbone_kwargs(converted, **overrides):
    kw = dict(converted[METADATA_KEY]["backbone_kwargs"])
    kw.update(overrides)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def test_official_hiera_b_identical_stage_outputs(tmp_path, capsys):
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    ref = hiera.hiera_base_224(pretrained=False).eval()
    with torch.no_grad():
        ref.pos_embed.normal_(std=0.02)
    # official checkpoints store the weights under "model_state"
    path, converted = _convert(tmp_path, {"model_state": ref.state_dict()}, "hiera_b", "--expect-size", "B")
    printed = capsys.readouterr().out
    assert "source format : hiera" in printed
    assert "pos_embed (1, 3136, 96)" in printed and "pos_embed.window_embed (1, 96, 56, 56)" in printed
    assert "model.backbone.bottom_up.pos_embed_window=56" in printed
    assert "model.backbone.bottom_up.pos_embed_global=null" in printed
    assert all(k.startswith("backbone.bottom_up.") for k in converted["model"])
    assert converted[METADATA_KEY]["size"] == "B"

    # configured like the original: mask units (= windows 8, 4) in stages 1-2, global stages 3-4, no relpos
    ours = HieraDet(**_backbone_kwargs(converted, window_size=(8, 4, 0, 0), global_blocks=(), relpos="none")).eval()
    assert load_backbone_checkpoint(ours, str(path)) == []
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        _, inter = ref(x, return_intermediates=True)
        out = ours(x)
    for ref_bhwc, name in zip(inter, ["scale2", "scale3", "scale4", "scale5"]):
        torch.testing.assert_close(out[name], ref_bhwc.permute(0, 3, 1, 2), rtol=0, atol=1e-4)


def test_timm_abswin_embedding_and_outputs(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("hiera_base_abswin_256", pretrained=False).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):  # layer scale starts at 1e-5: make the blocks matter
                p.uniform_(0.5, 1.5)
            if name.startswith("pos_embed"):
                p.normal_(std=0.5)
    path, converted = _convert(tmp_path, ref.state_dict(), "timm_abswin")
    printed = capsys.readouterr().out
    assert "source format : timm_hiera_abswin" in printed
    assert "pos_embed_antialias=true" in printed
    assert "48 layer-scale vectors folded" in printed

    ours = HieraDet(**_backbone_kwargs(converted, window_size=(8, 4, 0, 0), global_blocks=(), relpos="none")).eval()
    assert ours.pos_embed.antialias and ours.pos_embed.pretrain_size == (64, 64)
    load_backbone_checkpoint(ours, str(path))

    # at the pretraining size (256 px -> 64x64 tokens) the composite embedding is timm's, bit for bit
    C = ours.pos_embed.window_embed.shape[1]
    with torch.no_grad():
        timm_embed = ref._pos_embed(torch.zeros(1, 64 * 64, C))  # (1, N, C), raster order
        ours_embed = ours.pos_embed.pretrain_embed().flatten(2).transpose(1, 2)
        torch.testing.assert_close(ours_embed, timm_embed, rtol=0, atol=0)
        # our default (antialias=False, as SAM 2) is a different function of the same weights
        ours.pos_embed.antialias = False
        diff = (ours.pos_embed.pretrain_embed().flatten(2).transpose(1, 2) - timm_embed).abs().max().item()
        ours.pos_embed.antialias = True
    assert diff > 1e-3

    # and the whole network agrees (stages 3-4 global in timm's abs-win Hiera)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref_feats = ref.forward_intermediates(x, intermediates_only=True)
        out = ours(x)
    for ref_nchw, name in zip(ref_feats, ["scale2", "scale3", "scale4", "scale5"]):
        torch.testing.assert_close(out[name], ref_nchw, rtol=1e-4, atol=1e-4)


def test_mae_vit_every_window_tile_is_the_pretrained_grid(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False)
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}  # MAE: no classifier
    path, converted = _convert(tmp_path, {"model": sd}, "mae_vit_b")
    printed = capsys.readouterr().out
    assert "source format : mae_vit" in printed and "cls_token" in printed
    assert "pos_embed (1, 197, 768) " in printed or "pos_embed (1, 197, 768)\n" in printed
    assert converted[METADATA_KEY]["prefix"] == "backbone.net."

    ours = ViT(**_backbone_kwargs(converted, img_size=1024)).eval()
    missing = load_backbone_checkpoint(ours, str(path))
    assert sorted(missing) == sorted(f"blocks.{i}.attn.rel_pos_{a}" for i in (2, 5, 8, 11) for a in "hw")
    grid = sd["pos_embed"][0, 1:].reshape(14, 14, 768)  # drop the cls slot
    full = ours.pos_embed((64, 64))[0]  # 1024 px: 64x64 tokens, 14x14 windows (last ones cropped)
    for y in range(0, 64, 14):
        for x in range(0, 64, 14):
            h, w = min(14, 64 - y), min(14, 64 - x)
            assert torch.equal(full[y : y + h, x : x + w], grid[:h, :w])
    # the remaining weights are MAE's own
    assert torch.equal(ours.blocks[3].mlp.fc2.weight, sd["blocks.3.mlp.fc2.weight"])


def _sam2_tiny_trunk():
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    torch.manual_seed(0)
    # SAM 2-T's trunk (stages 1-2-7-2, windows 8, 4, 14, 7, global blocks 5, 7, 9, 7x7 background)
    trunk = sam2_hieradet.Hiera(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
        window_spec=(8, 4, 14, 7),
    ).eval()
    with torch.no_grad():  # both SAM 2 embeddings are zero-initialised
        trunk.pos_embed.normal_(std=0.5)
        trunk.pos_embed_window.normal_(std=0.5)
    return trunk


def test_sam2_trunk_loads_and_matches(tmp_path, capsys):
    trunk = _sam2_tiny_trunk()
    full = {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}
    full["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 768, 1, 1)
    full["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    path, converted = _convert(tmp_path, {"model": full}, "sam2_t")
    printed = capsys.readouterr().out
    assert "source format : sam2" in printed and "HieraDet-T" in printed
    assert "image_encoder.neck" in printed and "sam_mask_decoder" in printed  # reported as dropped
    assert "model.backbone.bottom_up.pos_embed=abswin_single" in printed

    # our detection default (relpos on the global blocks): only those new tables are missing
    ours = HieraDet(**_backbone_kwargs(converted)).eval()
    missing = load_backbone_checkpoint(ours, str(path))
    assert sorted(missing) == sorted(f"blocks.{i}.attn.rel_pos_{a}" for i in (5, 7, 9) for a in "hw")

    # equivalent: one-level embedding, SAM 2's windows and global blocks; relpos none or zero-initialised
    plain = HieraDet(**_backbone_kwargs(converted, relpos="none")).eval()
    load_backbone_checkpoint(plain, str(path))
    for hw in [(256, 256), (256, 320)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            ref_feats = trunk(x)
            out, out_relpos = plain(x), ours(x)
        for ref_nchw, name in zip(ref_feats, ["scale2", "scale3", "scale4", "scale5"]):
            torch.testing.assert_close(out[name], ref_nchw, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out_relpos[name], ref_nchw, rtol=1e-4, atol=1e-4)

    # not equivalent: the recursive (paper) embedding tiles the 1024-px embedding, so it equals SAM 2's
    # only at the pretraining size
    rec = plain.pos_embed
    rec.mode = "abswin"
    at_1024 = rec((256, 256))
    rec.mode = "abswin_single"
    torch.testing.assert_close(at_1024, rec((256, 256)), rtol=0, atol=0)
    single_512 = rec((128, 128))
    rec.mode = "abswin"
    assert not torch.allclose(rec((128, 128)), single_512, atol=1e-3)
    torch.testing.assert_close(rec((128, 128))[0], at_1024[0, :128, :128], rtol=0, atol=0)


def test_interpolate_baseline_option(tmp_path, capsys):
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    ref = hiera.Hiera(embed_dim=32, num_heads=1, stages=(1, 1, 3, 1))
    path, converted = _convert(tmp_path, ref.state_dict(), "tiny", "--pos-embed", "interpolate", "--num-heads", "1")
    assert "pos_embed=interpolate" in capsys.readouterr().out
    ours = HieraDet(**_backbone_kwargs(converted))
    load_backbone_checkpoint(ours, str(path))
    assert ours.pos_embed.mode == "interpolate"
    grid = ref.pos_embed.detach().reshape(1, 56, 56, 32).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours.pos_embed((56, 56)), grid.permute(0, 2, 3, 1), rtol=0, atol=0)
        resized = ours.pos_embed((112, 112)).permute(0, 3, 1, 2)
        expected = torch.nn.functional.interpolate(grid, size=(112, 112), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized, expected, rtol=0, atol=0)
    assert not torch.allclose(resized, tile_embed(grid, (112, 112)), atol=1e-3)
