"""Semantic segmentation: fully convolutional networks (FCN-32s/16s/8s) on a backbone; mIoU and pixel accuracy."""
