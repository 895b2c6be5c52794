"""DeepLabV3 training on Pascal VOC 2012. Knows nothing of Optuna.

Flat on purpose: each module is one job of a run (config, data/, model, budget, engine,
records, evaluation, metrics, optim, sampling, distributed, device, memory, sharedmem,
profile), and the two CLIs (train.py, evaluate.py) sit beside the library modules they
call. Imports go down (engine -> model, data, metrics, config), never in circles.
"""
