"""Mask R-CNN with a HieraDet-B backbone + FPN (p2-p6), heads as in ViTDet (Bolya et al. 2024, Sec. 4.2).

detectron2's ``common/models/mask_rcnn_fpn.py`` with ``bottom_up`` = HieraDet (windows 8, 4, 14, 7,
global blocks 12, 16, 20 with relpos, recursive abs-win position embedding), LayerNorm in the FPN and
the heads (:class:`~hieradet.modeling.ChannelLayerNorm`, detectron2's ``"LN"`` computed fused), a 2-conv RPN
head and a 4-conv + 1-fc box head, and every batch padded to a 1024 square.
Other sizes: ``model.backbone.bottom_up.update(hieradet_kwargs("L"))``.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from hieradet.modeling import ChannelLayerNorm, HieraDet, hieradet_kwargs

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

model.backbone.bottom_up = L(HieraDet)(
    **hieradet_kwargs("B"),  # embed_dim 96, heads 1, stages 2-3-16-3, global blocks 12, 16, 20
    window_size=(8, 4, 14, 7),
    relpos="global",
    img_size=1024,
    pos_embed="auto",  # the checkpoint's natural mode (hieradet.checkpoint.apply_checkpoint_layout)
    pos_embed_window=8,  # abs-win pretrained Hiera: 8x8 window + 7x7 global embeddings
    pos_embed_global=7,
    drop_path_rate=0.2,
    use_act_checkpoint=False,
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
model.backbone.norm = ChannelLayerNorm  # detectron2's "LN", fused (keeps less for backward)
model.backbone.square_pad = "${.bottom_up.img_size}"

model.pixel_mean = [123.675, 116.280, 103.530]  # ImageNet, RGB, 0-255
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"

# ViTDet's heads: 2-conv RPN head, LayerNorm in the conv heads, 4conv1fc box head
model.proposal_generator.head.conv_dims = [-1, -1]
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = ChannelLayerNorm
model.roi_heads.mask_head.conv_norm = ChannelLayerNorm
