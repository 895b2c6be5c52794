"""DeepLabV3 training on Pascal VOC 2012. Knows nothing of Optuna.

Flat on purpose: each module is one job of a run (config, data/, model, budget, engine,
records, evaluation, prediction, tracking, progress, metrics, optim, sampling, distributed,
device, memory, sharedmem, profile), and the three CLIs (train.py, evaluate.py, predict.py) sit
beside the library modules they call. Imports go down (engine -> model, data, metrics, config),
never in circles.
"""
