"""DeepLabV3 training on Pascal VOC 2012. Knows nothing of Optuna."""
