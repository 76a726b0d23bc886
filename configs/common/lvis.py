"""Turns a COCO LazyConfig into its LVIS v1 variant, as ViTDet trains on LVIS.

Repeat-factor sampling (threshold 0.001; ``hieradet.data.ResumableTrainingSampler`` with
detectron2's per-image repeat factors, so that ``--resume`` continues the stream), 1203 classes with
sigmoid cross-entropy and the federated loss (class weights ``image_count ** 0.5``), score threshold
0.02 and up to 300 detections per image, evaluated by the LVIS evaluator with 300 detections per
image. Apply it before ``make_cascade``: the cascade predictors copy these settings. ``lvis_schedule`` is the
LVIS schedule of every LVIS config (100 epochs of LVIS v1 train).
"""

from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from hieradet.data import ResumableTrainingSampler
from hieradet.engine import FedLossClassWeights
from hieradet.evaluation import LVISEvaluator
from hieradet.solver import LVIS_TRAIN_IMAGES, epoch_schedule

LVIS_NUM_CLASSES = 1203
LVIS_EPOCHS = 100  # ViTDet and Bolya et al. 2024 (App. A.3): 100 epochs for every size


def lvis_schedule(train, dataloader, epochs=LVIS_EPOCHS):
    """Sets ``train.max_iter`` / ``train.eval_period`` for ``epochs`` of LVIS v1 train and returns the step
    ``lr_multiplier``: 100 * 100000 / 64 = 156250 iterations, x0.1 at 8/9 and 26/27 (138889, 150463)."""
    lr_multiplier = epoch_schedule(train, dataloader, epochs=epochs, images_per_epoch=LVIS_TRAIN_IMAGES)
    train.eval_period = 30000
    return lr_multiplier


def make_lvis(model, dataloader, train_names="lvis_v1_train", test_names="lvis_v1_val"):
    """Edits a Mask R-CNN ``model`` and COCO ``dataloader`` LazyConfig in place for LVIS."""
    dataloader.train.dataset.names = train_names
    # detectron2's RepeatFactorTrainingSampler's sampling (stochastic rounding of the repeat factors each
    # epoch, then a shuffle), resumable at any iteration
    dataloader.train.sampler = L(ResumableTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001
        ),
        shuffle=True,
        seed=None,
    )
    dataloader.test.dataset.names = test_names
    # box/mask AP by faster-coco-eval (same numbers as the lvis package); dataloader.evaluator.backend=lvis opts out
    dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}", max_dets_per_image=300)

    model.roi_heads.num_classes = LVIS_NUM_CLASSES
    predictor = model.roi_heads.box_predictor
    predictor.test_score_thresh = 0.02
    predictor.test_topk_per_image = 300
    predictor.use_sigmoid_ce = True
    predictor.use_fed_loss = True
    predictor.get_fed_loss_cls_weights = L(FedLossClassWeights)(
        dataset_names="${dataloader.train.dataset.names}", freq_weight_power=0.5
    )
    return model, dataloader
