#!/usr/bin/env bash
# P1 as the course runs it:  bash hw1_1.sh <image_dir> <output_csv>
# filename,label for every .png/.jpg of image_dir, by python -m hw1.predict cls. The checkpoint:
# $HW1_P1_CHECKPOINT, else checkpoints/p1.pth (hw1_download.sh), else the shipped model A.
exec bash "$(dirname "${BASH_SOURCE[0]}")/hw1_predict.sh" cls "$@"
