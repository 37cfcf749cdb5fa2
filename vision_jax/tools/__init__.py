"""Tools around models: the model summary and the torchvision weight converter."""
