"""Mask R-CNN with the fixed ViTDet-B backbone + SimpleFeaturePyramid (p2-p6).

detectron2's ``common/models/mask_rcnn_vitdet.py`` (ViTDet's heads, LN, square padding to 1024;
the LN as :class:`~hieradet.modeling.ChannelLayerNorm`)
with its ViT replaced by :class:`hieradet.modeling.vit.ViT`: the pretrained 14x14 position
embedding is tiled per window ("abs win") and relative position embeddings are kept on the four
global blocks only. ``pos_embed="interpolate", relpos="all"`` gives back the original ViTDet.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from hieradet.modeling import ChannelLayerNorm
from hieradet.modeling.vit import ViT, vit_kwargs

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

model.backbone.net = L(ViT)(
    **vit_kwargs("B"),  # 768 wide, 12 blocks, 12 heads, global blocks 2, 5, 8, 11, drop path 0.1
    img_size=1024,
    patch_size=16,
    window_size=14,
    relpos="global",
    pos_embed="auto",  # the checkpoint's natural mode (hieradet.checkpoint.apply_checkpoint_layout)
    use_act_checkpoint=False,
    out_feature="last_feat",
)
model.backbone.square_pad = "${.net.img_size}"
# detectron2's "LN" (SimpleFeaturePyramid, box and mask heads), computed fused: same keys and maths, less kept
# for backward
model.backbone.norm = ChannelLayerNorm
model.roi_heads.box_head.conv_norm = ChannelLayerNorm
model.roi_heads.mask_head.conv_norm = ChannelLayerNorm
