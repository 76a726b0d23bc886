"""hieradet.engine.LazyPredictor: the test resize it takes from the config."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from hieradet.engine.predictor import LazyPredictor
from hieradet.testing import tiny_mask_rcnn


class _Recorder:
    """Stands in for the model: records what the predictor feeds it."""

    def __init__(self):
        self.inputs = []

    def __call__(self, batch):
        self.inputs.append(batch[0])
        return [{"instances": None}]


def _predictor(cfg):
    predictor = LazyPredictor(cfg, checkpoint=None)
    predictor.model = _Recorder()
    return predictor


def _image(h=96, w=128):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _cfg(**test_mapper):
    cfg = OmegaConf.create({"model": tiny_mask_rcnn(img_size=64)})
    if test_mapper:
        cfg.dataloader = {"test": {"mapper": test_mapper}}
    return cfg


def test_an_empty_test_augmentation_list_means_no_resize():
    predictor = _predictor(_cfg(augmentations=[]))
    predictor(_image())
    inp = predictor.model.inputs[0]
    assert tuple(inp["image"].shape) == (3, 96, 128)
    assert (inp["height"], inp["width"]) == (96, 128)


def test_without_a_test_mapper_the_short_edge_goes_to_800():
    predictor = _predictor(_cfg())
    predictor(_image())
    assert tuple(predictor.model.inputs[0]["image"].shape) == (3, 800, 1067)


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_channels_follow_the_models_input_format(fmt):
    cfg = _cfg(augmentations=[])
    cfg.model.input_format = fmt
    predictor = _predictor(cfg)
    image = _image()
    predictor(image)
    expected = image[:, :, ::-1] if fmt == "RGB" else image
    np.testing.assert_array_equal(predictor.model.inputs[0]["image"].permute(1, 2, 0).numpy(), expected)
