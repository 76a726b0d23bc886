"""The HiViT benchmark presets (``hivit-{t,s,b,l}``): the size table, the project's detection config, one run."""

import json

import pytest
import torch
from detectron2.config import instantiate

import hieradet.benchmark as bench
from hieradet.modeling.hivit import HIVIT_SIZES, HiViT, default_hivit_global_blocks


@pytest.fixture(scope="module")
def cli(load_tool):
    return load_tool("benchmark")


def test_hivit_presets_follow_the_size_table():
    ours = [p for p in bench.presets.presets() if p.startswith("hivit-")]
    assert ours == ["hivit-t", "hivit-s", "hivit-b", "hivit-l"]
    assert {f"hivit-{s.lower()}" for s in HIVIT_SIZES} <= set(bench.PRESETS)
    assert bench.parse_preset("HiViT-B") == ("hivit", "B")
    with pytest.raises(ValueError, match="unknown model 'hivit-h'"):
        bench.parse_preset("hivit-h")
    # sizes on the meta device: no weights are allocated, the constructor runs as for a real build
    with torch.device("meta"):
        for size, fields in HIVIT_SIZES.items():
            net = bench.build_backbone(f"hivit-{size.lower()}", img_size=1024)
            assert isinstance(net, HiViT) and net.depths == fields["depths"]
            assert net.global_blocks == default_hivit_global_blocks(fields["depths"][2])
            assert len(net.blocks) == fields["depths"][2] and net.blocks[0].attn.num_heads == fields["num_heads"]


def test_hivit_b_preset_is_the_backbone_of_the_projects_mask_rcnn():
    """``--part backbone`` times exactly the network that ``--part model`` (the HiViT project's Mask R-CNN config at
    the preset's size) puts under its FPN: same parameters, same features for the same weights."""
    preset = bench.build_backbone("hivit-b", img_size=128)
    cfg = bench.model_config("hivit-b", img_size=128)
    assert cfg.backbone._target_.__name__ == "FPN" and cfg.backbone.square_pad == 128  # square-padded like the others
    config = instantiate(cfg.backbone.bottom_up)
    assert type(config) is HiViT
    n = sum(p.numel() for p in preset.parameters())
    assert n == sum(p.numel() for p in config.parameters())
    assert 65.7e6 < n < 65.9e6  # HiViT-B of Tab. 7 plus the relpos tables of the 4 global blocks at 128 px
    shapes = {k: tuple(v.shape) for k, v in preset.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in config.state_dict().items()}
    assert preset.global_blocks == config.global_blocks == (4, 9, 14, 19)
    preset.load_state_dict(config.state_dict())
    preset.eval(), config.eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = preset(x), config(x)
    assert list(a) == ["scale2", "scale3", "scale4", "scale5"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_hivit_detector_runs_end_to_end_and_reports(cli, tmp_path, monkeypatch):
    """``--part model`` on a HiViT preset through the CLI, then ``report`` on its JSON."""
    import hieradet.benchmark.models as models

    def fewer_boxes(name, img_size):  # 50 proposals, 10 detections, not 1000 and 100: the box and mask heads'
        cfg = bench.model_config(name, img_size)  # 4 convs per box dominate the time at 128 px
        cfg.proposal_generator.post_nms_topk = (1000, 50)
        cfg.roi_heads.box_predictor.test_topk_per_image = 10
        return cfg

    monkeypatch.setattr(models, "model_config", fewer_boxes)
    out = tmp_path / "hivit.json"
    res = cli.main(
        ["hivit-t", "--part", "model", "--size", "128", "--iters", "1", "--warmup", "0", "--discard", "0"]
        + ["--threads", "1", "--json", str(out)]
    )
    (m,) = res["models"]
    assert m["name"] == "hivit-t" and m["n"] == 1 and m["median_ms"] > 0
    with torch.device("meta"):  # the timed network is the whole Mask R-CNN of the project's config, HiViT-T inside
        whole = sum(p.numel() for p in instantiate(bench.model_config("hivit-t", 128)).parameters())
        trunk = sum(p.numel() for p in bench.build_backbone("hivit-t", 128).parameters())
    assert round(m["params_m"] * 1e6) == whole and whole > trunk + 20e6  # FPN and heads: ~22M
    table = cli.main(["report", str(out)])
    cells = [c.strip() for c in table.splitlines()[2].split("|")]
    assert cells[1:4] == ["hivit-t", "model", "128"] and cells[6] == f"{m['median_ms']:.0f}"
    assert json.loads(out.read_text())["settings"]["model"] == "hivit-t"
