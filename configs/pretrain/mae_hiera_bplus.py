"""Sparse MAE pretraining of Hiera-B+, abs-win embedding (Ryali et al. 2023, Tab. 14a: drop path 0.2)."""

from hieradet.pretrain import pretrain_encoder_kwargs

from .mae_hiera_b import dataloader, model, optimizer, train

model.encoder.update(pretrain_encoder_kwargs("B+", img_size=224, pos_embed_type="abswin", drop_path_rate=0.2))
train.output_dir = "./output/mae_hiera_bplus_abswin"
