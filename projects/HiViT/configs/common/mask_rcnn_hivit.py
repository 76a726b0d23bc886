"""Mask R-CNN with a HiViT-B backbone + detectron2's FPN (p2-p6): the project's shared Mask R-CNN
(``configs/common/models/mask_rcnn_hieradet.py``: ViTDet heads with LayerNorm, 4conv1fc box head) with
``bottom_up`` = HiViT.

HiViT detection variant: window attention (14 = the 224 px pretraining grid) in the main stage except four evenly
spaced global blocks (B: 4, 9, 14, 19, as the HiViT authors), the pretrained 14x14 absolute embedding tiled as the
window embedding (abs-win) and zero-initialised relative position embeddings on the global blocks only.
``pos_embed="interpolate", relpos="none"`` is the HiViT authors' own detection backbone (the bugged baseline).
Features: scale2..scale5 at strides 4, 8, 16 and 32 (a max-pool of stride 16), channels C/4, C/2, C, C.
Other sizes: ``model.backbone.bottom_up.update(hivit_kwargs("L"))``. Pretrained weights: convert an official
HiViT checkpoint with ``projects/HiViT/tools/convert_hivit_checkpoint.py`` and pass ``train.init_checkpoint``.
"""

from detectron2.config import LazyCall as L

from hieradet.modeling.hivit import HiViT, hivit_kwargs

from .....configs.common.models.mask_rcnn_hieradet import model

model.backbone.bottom_up = L(HiViT)(
    **hivit_kwargs("B"),  # main width 512 (stem 128, 256), blocks 2-2-20, 8 heads, global 4, 9, 14, 19
    window_size=14,
    relpos="global",
    img_size=1344,  # relpos tables of the global blocks sized for the longest side (1333) of the recipe's images
    pretrain_img_size=224,
    pos_embed="auto",  # the checkpoint's natural mode (hieradet.checkpoint.apply_checkpoint_layout)
    out_norm=True,
    use_act_checkpoint=False,
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
# multi-scale data (common/coco_multiscale.py): pad each batch to a multiple of 32, not to a square. With the
# project's LSJ loader (configs/common/coco_loader_lsj.py) set bottom_up.img_size=1024, backbone.square_pad=1024.
model.backbone.square_pad = 0
