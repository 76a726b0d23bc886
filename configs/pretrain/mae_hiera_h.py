"""Sparse MAE pretraining of Hiera-H, abs-win embedding (Ryali et al. 2023, Tab. 14a: drop path 0.3)."""

from hieradet.pretrain import pretrain_encoder_kwargs

from .mae_hiera_b import dataloader, model, optimizer, train

model.encoder.update(pretrain_encoder_kwargs("H", img_size=224, pos_embed_type="abswin", drop_path_rate=0.3))
train.output_dir = "./output/mae_hiera_h_abswin"
