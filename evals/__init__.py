"""Evaluation of generated images: the code that benchmarks and tests both rely on.

    evals.judgement       Judgement (adherence + named per-attribute scores), the Judge protocol, Evaluation
                          (judge, prompts, real images): what every judge below returns and a benchmark needs
    evals.judges          JUDGES: one Evaluation per built-in dataset, by the name its registry entry gives
    evals.shapes          ShapesJudge / judge_shapes: does a shapes sample show its caption's color, shape, position,
                          size?
    evals.digits          DigitsJudge: which digit does a digits sample show?
    evals.sprites         SpritesJudge: is the nearest training sprite the captioned one (top-1, top-5)? does the
                          dominant colour match the caption's (color_margin: how clear a call)? real_halves: the
                          real-vs-real split for FD
    evals.distances       pca_features + frechet_distance (an FID for small images), mean_pairwise_distance
    evals.seed_reference  the design's plain way of sampling (two passes per step, attention by hand) on our
                          U-Net's weights: the baseline the sampler benchmark compares with

Images are [B, 3, H, W] floats in 0..1, as torch tensors or numpy arrays.
"""
