"""The pipeline's stages as library calls: run folders, the training loop, the predictor, score
aggregation and the pCR stages. Entry points (train.py, infer.py, eval.py), the challenge wrapper,
benchmarks and tests call these; this package imports core, data and nets, never an entry point.
"""
