"""Sparse MAE pretraining of Hiera-B with absolute-win position embeddings on ImageNet-1k (224 px).

Ryali et al. 2023, Tab. 14a (image pretraining): AdamW (0.9, 0.95), weight decay 0.05, lr 8e-4 at batch 4096,
cosine schedule with 40 warmup epochs, 400 epochs (1600 for the main results), random resized crop [0.2, 1] +
horizontal flip, mask ratio 0.6 of 32-px mask units, 8 decoder blocks with 16 heads (decoder width 512, MAE's),
drop path 0.2 (B). The embedding is abs-win: an 8x8 window embedding tiled + a 7x7 global one interpolated
(Bolya et al. 2024, Sec. 3). For the full 56x56 grid (``pos_embed_type="interpolate"``):
``model.encoder.pos_embed_window=56 model.encoder.pos_embed_global=null``.

The final ``hieradet_backbone_final.pth`` is a detection ``train.init_checkpoint`` (its ``__hieradet__``
metadata records the layout).
"""

from detectron2.config import LazyCall as L

from hieradet.modeling import HieraDet
from hieradet.pretrain import HieraMAE, pretrain_encoder_kwargs
from hieradet.pretrain.data import ImageFolderDataset

IMAGENET_TRAIN_IMAGES = 1281167

model = L(HieraMAE)(
    encoder=L(HieraDet)(**pretrain_encoder_kwargs("B", img_size=224, pos_embed_type="abswin", drop_path_rate=0.2)),
    img_size=224,
    mask_unit=32,
    mask_ratio=0.6,
    decoder_dim=512,
    decoder_depth=8,
    decoder_heads=16,
    norm_pix_loss=True,
    multi_scale=True,
)

dataloader = dict(
    dataset=L(ImageFolderDataset)(root="datasets/imagenet/train", img_size=224, crop_scale=(0.2, 1.0), hflip=True),
    total_batch_size=4096,
    num_workers=8,
)

optimizer = dict(lr=8e-4, weight_decay=0.05, betas=(0.9, 0.95))

# 400 epochs at 4096 images per iteration: 400 * 1281167 / 4096 = 125114 iterations, 40 warmup epochs
_iters_per_epoch = IMAGENET_TRAIN_IMAGES // 4096
train = dict(
    output_dir="./output/mae_hiera_b_abswin",
    max_iter=400 * _iters_per_epoch,
    warmup_iters=40 * _iters_per_epoch,
    checkpoint_period=5000,
    log_period=20,
    amp=True,
    seed=0,
    device=None,
)
