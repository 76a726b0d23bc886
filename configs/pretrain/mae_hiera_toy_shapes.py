"""A laptop-size MAE run on the project's generated images: a tiny Hiera (32 wide, 1-2-4-1 blocks) at 64 px,
abs-win embedding (8x8 window + 2x2 global: one global token per 32-px mask unit, as 7x7 is at 224 px).

    python tools/pretrain.py --config-file configs/pretrain/mae_hiera_toy_shapes.py

The images are generated once into ``dataloader.dataset.root``. Minutes on a CPU; a smoke test of the
pipeline, not a useful backbone.
"""

from detectron2.config import LazyCall as L

from hieradet.modeling import HieraDet
from hieradet.pretrain import HieraMAE, pretrain_encoder_kwargs
from hieradet.pretrain.data import GeneratedImageDataset

model = L(HieraMAE)(
    encoder=L(HieraDet)(
        **pretrain_encoder_kwargs(
            None, img_size=64, pos_embed_type="abswin", embed_dim=32, num_heads=1, stages=(1, 2, 4, 1)
        )
    ),
    img_size=64,
    mask_unit=32,
    mask_ratio=0.5,
    decoder_dim=64,
    decoder_depth=2,
    decoder_heads=4,
)

dataloader = dict(
    dataset=L(GeneratedImageDataset)(root="datasets/mae_shapes", num_images=256, image_size=96, img_size=64),
    total_batch_size=32,
    num_workers=0,
)

optimizer = dict(lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.95))

train = dict(
    output_dir="./output/mae_hiera_toy_shapes",
    max_iter=200,
    warmup_iters=20,
    checkpoint_period=100,
    log_period=10,
    amp=True,
    seed=0,
    device=None,
)
