"""hw1: DLCV Fall 2022 homework 1 (P1 classification, P2 segmentation) in plain PyTorch."""

__version__ = "0.1.0"
