#!/usr/bin/env bash
# P2 as the course runs it:  bash hw1_2.sh <image_dir> <output_dir>
# One colour mask per satellite image (xxxx_sat.jpg -> xxxx_mask.png), by python -m hw1.predict seg.
# The checkpoint: $HW1_P2_CHECKPOINT, else checkpoints/p2.pth (hw1_download.sh), else the shipped
# model, checkpoints/p2_vgg16_fcn8s.pth (a VGG16-FCN8s trained from scratch).
exec bash "$(dirname "${BASH_SOURCE[0]}")/hw1_predict.sh" seg "$@"
