"""Datasets, image decoding, the mask colour codec and the transforms of both tasks."""
