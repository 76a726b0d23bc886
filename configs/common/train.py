"""Training options read by ``hieradet.engine.do_train`` (detectron2's ``common/train.py``, with
mixed precision and fp16 gradient compression on, as in ViTDet)."""

from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
# The papers fine-tune pretrained backbones: convert one with tools/convert_checkpoint.py and pass
# train.init_checkpoint=/path/to/converted.pth on the command line.
train.init_checkpoint = ""
