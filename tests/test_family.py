"""Backbone families are declared once (:mod:`hieradet.modeling.family`) and checkpoint formats are a table of
detect / convert functions (:mod:`hieradet.checkpoint.formats`): a toy family registered in one place gets the
builds, conversion, layout records, benchmark preset and training every built-in family gets."""

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf

from hieradet.benchmark.presets import build_backbone, parse_preset, presets
from hieradet.checkpoint import (
    SOURCE_FORMATS,
    CheckpointError,
    ConversionResult,
    HieraDetCheckpointer,
    SourceFormat,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
    detect_format,
    find_backbones,
    grid_from_tokens,
    read_checkpoint_layout,
    register_format,
    training_metadata,
    unregister_format,
)
from hieradet.checkpoint.formats import FORMATS, detecting_formats
from hieradet.checkpoint.layout import ARCHITECTURE_FIELDS, LAYOUT_FIELDS
from hieradet.modeling import HIERA_SIZES, HieraDet, ViT
from hieradet.modeling.family import (
    BackboneFamily,
    families,
    family_of,
    get_family,
    match_size,
    register_family,
    unregister_family,
)
from hieradet.modeling.layout_record import model_record
from hieradet.testing import tiny_backbone_kwargs, tiny_mask_rcnn

# ----------------------------------------------------------------------------------------------
# every known format is claimed by exactly one entry of the table

TINY_HIERA = dict(embed_dim=32, num_heads=1, stages=(1, 1, 3, 1))


def _known_format_state_dicts():
    """``{format: state dict}``: a tiny model of each supported source, built with the reference package."""
    timm = pytest.importorskip("timm")
    hiera = pytest.importorskip("hiera")
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    from test_hivit_convert import _official_state_dict

    torch.manual_seed(0)
    sam2 = sam2_hieradet.Hiera(
        **TINY_HIERA, global_att_blocks=(3,), window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)
    ).state_dict()
    sam2_kw = dict(TINY_HIERA, global_att_blocks=(3,))
    return {
        "mae_vit": timm.create_model("vit_tiny_patch16_224", depth=1).state_dict(),
        "hiera": hiera.Hiera(**TINY_HIERA).state_dict(),
        "timm_hiera": timm.create_model("hiera_tiny_224", **TINY_HIERA).state_dict(),
        "timm_hiera_abswin": timm.create_model("hiera_small_abswin_256", **TINY_HIERA).state_dict(),
        "sam2": sam2,
        "sam2 (full checkpoint)": {"image_encoder.trunk." + k: v for k, v in sam2.items()},
        "timm_hieradet": timm.create_model("sam2_hiera_tiny", **sam2_kw).state_dict(),
        "timm_hieradet (layer scale)": timm.create_model("hieradet_small", **sam2_kw).state_dict(),
        "hivit": _official_state_dict(),
    }


@pytest.fixture(scope="module")
def known_formats():
    return _known_format_state_dicts()


def test_each_known_format_is_detected_by_exactly_one_entry(known_formats):
    assert set(FORMATS) == set(SOURCE_FORMATS)
    assert {name.split(" ")[0] for name in known_formats} == set(FORMATS)  # every format has a file here
    for name, sd in known_formats.items():
        assert detecting_formats(sd) == [name.split(" ")[0]], name
        assert detect_format(sd) == name.split(" ")[0]


def test_each_format_converts_into_its_declared_family(known_formats):
    for name, sd in known_formats.items():
        fmt = FORMATS[name.split(" ")[0]]
        result = convert_state_dict(sd, num_heads=1)
        assert result.source_format == fmt.name and result.arch == fmt.family, name
        assert isinstance(result, ConversionResult)
    # the per-format layouts of the split Hiera converter
    abswin = convert_state_dict(known_formats["timm_hiera_abswin"], num_heads=1)
    assert abswin.embed_kwargs["pos_embed_antialias"] is True and abswin.embed_kwargs["window_size"] == (8, 4, 16, 8)
    official = convert_state_dict(known_formats["hiera"], num_heads=1)
    assert official.embed_kwargs["pos_embed_global"] is None and "window_size" not in official.embed_kwargs
    sam2 = convert_state_dict(known_formats["sam2 (full checkpoint)"], num_heads=1)
    assert sam2.embed_kwargs["pos_embed"] == "abswin_single" and sam2.renamed[0][0].startswith("image_encoder.trunk.")
    scaled = convert_state_dict(known_formats["timm_hieradet (layer scale)"], num_heads=1)
    assert scaled.folded and scaled.embed_kwargs["window_size"] == (8, 4, 16, 8)


def test_a_state_dict_two_formats_claim_is_refused(known_formats):
    hivit = known_formats["hivit"]
    merged = dict(known_formats["hiera"], absolute_pos_embed=hivit["absolute_pos_embed"])
    merged.update({k: v for k, v in hivit.items() if k.endswith("reduction.weight")})
    assert detecting_formats(merged) == ["hiera", "hivit"]
    with pytest.raises(CheckpointError, match=r"several source formats \(hiera, hivit\).*on its own"):
        detect_format(merged)


# ----------------------------------------------------------------------------------------------
# one size matcher


def test_match_size_compares_sequences_of_any_type():
    assert match_size(HIERA_SIZES, {"embed_dim": 96, "stages": [1, 2, 7, 2]}) == "T"
    assert match_size(HIERA_SIZES, {"embed_dim": 96, "stages": OmegaConf.create([2, 3, 16, 3])}) == "B"
    assert match_size(HIERA_SIZES, {"embed_dim": 112, "stages": (2, 3, 16, 3), "num_heads": 2}) == "B+"
    assert match_size(HIERA_SIZES, {"embed_dim": 112, "stages": (2, 3, 16, 3), "num_heads": 1}) is None
    assert match_size(HIERA_SIZES, {"embed_dim": 96, "depth": 12}) is None  # a field no preset has
    assert get_family("ViT").size_of({"embed_dim": 1024, "depth": 24}) == "L"
    assert get_family("hivit").size_of({"embed_dim": 512, "depths": [2, 2, 20]}) == "B"


def test_families_are_the_one_source_of_the_tables():
    assert [f.name for f in families()[:3]] == ["HieraDet", "ViT", "HiViT"]
    assert LAYOUT_FIELDS["ViT"] == get_family("ViT").layout_fields
    assert ARCHITECTURE_FIELDS["HiViT"] == ("embed_dim", "depths")
    assert family_of(HieraDet) is get_family("hieradet") and family_of(torch.nn.Linear(1, 1)) is None
    assert get_family("vit").prefix == "backbone.net." and get_family("HieraDet").prefix == "backbone.bottom_up."
    with pytest.raises(ValueError, match="unknown backbone family 'resnet'.*register_family"):
        get_family("resnet")
    clash = BackboneFamily(
        name="Other", cls=ViT, sizes={}, architecture_fields=("embed_dim",), layout_fields=(), tiny_kwargs={}, key="o"
    )
    with pytest.raises(ValueError, match="same class as the registered family ViT"):
        register_family(clash)
    with pytest.raises(ValueError, match="neck must be one of"):
        BackboneFamily(
            name="X", cls=ViT, sizes={}, architecture_fields=(), layout_fields=(), tiny_kwargs={}, key="x", neck="?"
        )


# ----------------------------------------------------------------------------------------------
# a toy family, registered in one place


class ToyViT(ViT):
    """A fourth backbone: the model file of a new family (here, a plain ViT under another name)."""


TOY_SIZES = {"S": dict(embed_dim=32, depth=2, num_heads=2, global_blocks=(1,))}
GRID = 4  # the toy source's pretraining grid: 64 px at patch 16


def _convert_toy(sd, opts) -> ConversionResult:
    """The toy source's format: ``toy_pos_embed`` (1, 1 + g*g, C) with a cls slot -> the window tile."""
    fam = get_family("ToyViT")
    out = {k: v for k, v in sd.items() if k != "toy_pos_embed"}
    out["pos_embed.window_embed"] = grid_from_tokens(sd["toy_pos_embed"], 1)
    grid = int(out["pos_embed.window_embed"].shape[-1])
    embed = dict(pretrain_img_size=16 * grid, pos_embed=opts["pos_embed"] or "abswin", window_size=grid)
    depth = len({k.split(".")[1] for k in out if k.startswith("blocks.")})
    size = fam.size_of({"embed_dim": int(out["patch_embed.proj.weight"].shape[0]), "depth": depth})
    return ConversionResult(
        state_dict=out,
        source_format="toy_mae",
        arch="ToyViT",
        size=size,
        backbone_kwargs=fam.kwargs(size, **embed),
        embed_kwargs=embed,
        renamed=[("toy_pos_embed", "pos_embed.window_embed")],
    )


@pytest.fixture
def toy_family():
    """The whole declaration of the toy family: its spec and its checkpoint format."""
    fam = register_family(
        BackboneFamily(
            name="ToyViT",
            cls=ToyViT,
            sizes=TOY_SIZES,
            architecture_fields=("embed_dim", "depth"),
            layout_fields=("pretrain_img_size", "pos_embed", "patch_size", "window_size", "global_blocks"),
            tiny_kwargs=dict(TOY_SIZES["S"], window_size=GRID, pretrain_img_size=16 * GRID),
            key="toy",
            neck="simple_pyramid",
            preset="toy",
        )
    )
    register_format(SourceFormat("toy_mae", "toy MAE ViT", "ToyViT", lambda sd: "toy_pos_embed" in sd, _convert_toy))
    yield fam
    unregister_format("toy_mae")
    unregister_family("ToyViT")


def _toy_source():
    """A toy checkpoint as its (imaginary) authors publish it: MAE-style token embedding with a cls slot."""
    torch.manual_seed(0)
    net = ToyViT(**tiny_backbone_kwargs("toy", img_size=128))
    sd = {k: v for k, v in net.state_dict().items() if k != "layout_record" and ".rel_pos_" not in k}
    grid = sd.pop("pos_embed.window_embed")
    grid.normal_()
    tokens = grid.flatten(2).transpose(1, 2)
    sd["toy_pos_embed"] = torch.cat([torch.zeros(1, 1, tokens.shape[-1]), tokens], dim=1)
    return sd, grid


def _batch(size=128):
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.tensor([[16.0, 20.0, 80.0, 100.0]]))
    inst.gt_classes = torch.tensor([1])
    masks = torch.zeros(1, size, size, dtype=torch.bool)
    masks[0, 20:100, 16:80] = True
    inst.gt_masks = BitMasks(masks)
    return [{"image": torch.rand(3, size, size) * 255, "height": size, "width": size, "instances": inst}]


def test_a_toy_family_registered_in_one_place_converts_builds_loads_benchmarks_and_trains(toy_family, tmp_path):
    # convert: the format table routes the toy file to its converter, the family gives class, prefix and size
    src, grid = _toy_source()
    assert detecting_formats(src) == ["toy_mae"] and "toy_mae" in SOURCE_FORMATS
    result = convert_state_dict(src)
    assert (result.arch, result.size) == ("ToyViT", "S")
    assert torch.equal(result.state_dict["pos_embed.window_embed"], grid)
    path = str(tmp_path / "toy_converted.pth")
    torch.save(build_converted_checkpoint(result, source_file="toy.pth"), path)
    assert all(k.startswith("backbone.net.") for k in torch.load(path, weights_only=True)["model"])

    # layout: the file's record names the toy family; a config of the family takes the recorded layout
    record = read_checkpoint_layout(path)
    assert record["arch"] == "ToyViT" and record["architecture"] == {"embed_dim": 32, "depth": 2}
    cfg = OmegaConf.create({"model": tiny_mask_rcnn("toy", num_classes=2, img_size=128)})
    cfg.model.backbone.net.window_size = 8  # disagrees with the 4x4 pretraining tile: set back from the record
    lines = []
    apply_checkpoint_layout(cfg, path, log=lines.append)
    assert cfg.model.backbone.net.window_size == GRID and any("window_size: 8 -> 4" in line for line in lines)

    # build and load: the toy backbone is found, loaded and its record checked like any other family's
    model = instantiate(cfg.model)
    ((prefix, (arch, net)),) = find_backbones(model).items()
    assert (prefix, arch, type(net)) == ("backbone.net.", "ToyViT", ToyViT)
    HieraDetCheckpointer(model).load(path)
    assert torch.equal(net.pos_embed.window_embed.detach(), grid)
    assert model_record(net)["arch"] == "ToyViT" and training_metadata(model)["size"] == "S"

    # a tiny train step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = net.blocks[0].mlp.fc1.weight.detach().clone()
    with EventStorage(0):
        losses = model(_batch())
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before, net.blocks[0].mlp.fc1.weight)

    # benchmark preset
    assert "toy-s" in presets() and parse_preset("toy-s") == ("toy", "S")
    bench = build_backbone("toy-s", img_size=128)
    assert type(bench) is ToyViT and bench.pos_embed.window_embed.shape[1] == 32


def test_the_toy_family_is_gone_after_unregistering(toy_family):
    unregister_format("toy_mae")
    unregister_family("ToyViT")
    try:
        assert "toy-s" not in presets() and "toy_mae" not in SOURCE_FORMATS
        with pytest.raises(ValueError, match="unknown backbone kind 'toy'"):
            tiny_backbone_kwargs("toy")
        assert family_of(ToyViT) is get_family("ViT")  # the nearest registered class
    finally:  # the fixture unregisters again
        register_family(toy_family)
        register_format(
            SourceFormat("toy_mae", "toy MAE ViT", "ToyViT", lambda sd: "toy_pos_embed" in sd, _convert_toy)
        )
