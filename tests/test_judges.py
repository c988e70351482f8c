"""Sanity checks of the judges (evals/) on real data: they must pass the
real images and fail mismatched captions, or their scores mean nothing."""

import sys

import numpy as np
import pytest
import torch
from t2i_test_utils import needs_sprites

from evals.digits import DigitsJudge
from evals.distances import frechet_distance, mean_pairwise_distance, pca_features
from evals.shapes import detect_shape, judge_shapes, summarize_judgements
from t2i_core.data import digits_caption, generate_shapes, load_digits_arrays


def shapes_batch(count, resolution=32, seed=0):
    images, captions, attributes = generate_shapes(count, resolution=resolution, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, captions, attributes


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_judge_passes_real_images(resolution):
    images, captions, _ = shapes_batch(360, resolution, seed=11)
    scores = summarize_judgements(judge_shapes(images, captions))
    assert all(scores[a] >= 0.99 for a in ("color", "shape", "position", "size", "all")), scores


def test_shapes_judge_tolerates_noise():
    images, captions, _ = shapes_batch(144, seed=12)
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert summarize_judgements(judge_shapes(noisy, captions))["all"] >= 0.95


def test_shapes_judge_fails_shuffled_captions():
    images, captions, _ = shapes_batch(360, seed=13)
    shuffled = [captions[i] for i in np.random.default_rng(0).permutation(len(captions))]
    scores = summarize_judgements(judge_shapes(images.numpy(), shuffled))
    # chance is 1/4 color, 1/3 shape and position, 1/2 size, 1/72 for all
    assert scores["color"] < 0.4 and scores["shape"] < 0.5 and scores["position"] < 0.5 and scores["size"] < 0.65
    assert scores["all"] < 0.05


def test_shapes_judge_reports_what_it_sees():
    images, captions, attributes = shapes_batch(3, seed=14)
    assert detect_shape(images[0]) == attributes[0]
    blank = torch.zeros(2, 3, 32, 32)
    judgements = judge_shapes(blank, captions[:2])
    assert judgements[0]["detected"] is None and not any(judgements[0][a] for a in ("color", "shape", "all"))
    with pytest.raises(ValueError, match="one caption per image"):
        judge_shapes(images, captions[:2])


@pytest.fixture(scope="module")
def digits_judge():
    return DigitsJudge(resolution=16, seed=0)


def test_digits_judge_reads_heldout_digits(digits_judge):
    assert digits_judge.heldout_accuracy() >= 0.95


def test_digits_adherence(digits_judge):
    images, labels = load_digits_arrays(16, "heldout", seed=0)
    right = [digits_caption(label) for label in labels.tolist()]
    wrong = [digits_caption((label + 1) % 10) for label in labels.tolist()]
    assert digits_judge.adherence(images, right) >= 0.95
    assert digits_judge.adherence(images, wrong) < 0.05
    assert digits_judge.predict(images[:20].numpy()).tolist() == digits_judge.predict(images[:20]).tolist()


def test_digits_judge_asks_for_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        DigitsJudge(16)


def test_frechet_distance_on_pca_features():
    train, _ = load_digits_arrays(16, "train", seed=0)
    heldout, _ = load_digits_arrays(16, "heldout", seed=0)
    features = pca_features(train, n_components=16)
    real = features(heldout)
    assert real.shape == (len(heldout), 16)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    same_distribution = frechet_distance(features(train), real)
    noise = features(torch.rand(len(heldout), 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    blurry = features(torch.nn.functional.avg_pool2d(heldout, 5, 1, 2))
    assert 0 < same_distribution < frechet_distance(blurry, real) < frechet_distance(noise, real)
    with pytest.raises(ValueError, match="same resolution"):
        features(torch.zeros(2, 3, 32, 32))


def test_frechet_distance_matches_closed_form():
    # for two Gaussians with diagonal covariances the distance is |mu_a - mu_b|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(1, 2, (20000, 3))
    expected = 3 * 1.0 + 3 * (1 - 2) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_mean_pairwise_distance():
    same = torch.full((5, 3, 8, 8), 0.5)
    assert mean_pairwise_distance(same) == 0.0
    black_white = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    assert mean_pairwise_distance(black_white) == pytest.approx(1.0)
    images, _, _ = shapes_batch(20)
    assert 0 < mean_pairwise_distance(images) < 1
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_distance(same[:1])


# -----------------------------------------------------------------------------
# sprites (npm tarballs that `make setup` fetches into .cache/npm)




@pytest.fixture(scope="module")
def sprites32():
    from evals.sprites import SpritesJudge, sprites_tensor
    from t2i_core.data import load_sprites
    images, captions, attributes = load_sprites(32)
    images = sprites_tensor(images)
    return images, captions, attributes, SpritesJudge(images, captions)


def _shuffled(captions, seed=0):
    return [captions[i] for i in np.random.default_rng(seed).permutation(len(captions))]


@needs_sprites
def test_sprites_retrieval_passes_real_images_and_fails_shuffled_captions(sprites32):
    images, captions, _, judge = sprites32
    noisy = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    right = judge.retrieval(noisy, captions)
    assert right["top1"] >= 0.95 and right["top5"] >= 0.99, right
    shifted = judge.retrieval(torch.roll(images, 1, dims=-1), captions)  # one pixel to the right
    assert shifted["top5"] >= 0.9, shifted
    wrong = judge.retrieval(noisy, _shuffled(captions))
    assert wrong["chance_top1"] == pytest.approx(1 / len(captions)) and wrong["chance_top5"] == pytest.approx(5 / len(captions))
    assert wrong["top1"] < 5 * wrong["chance_top1"] and wrong["top5"] < 5 * wrong["chance_top5"], wrong
    assert judge.ranks(images[:3], captions[:3]).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="not one of the training captions"):
        judge.retrieval(images[:1], ["a red fire pokemon, missingno"])


@needs_sprites
@pytest.mark.parametrize("resolution", [32, 64])
def test_sprites_color_judge_passes_real_images_and_fails_shuffled_captions(sprites32, resolution):
    from evals.sprites import SpritesJudge, sprites_tensor
    from t2i_core.data import load_sprites
    _, _, _, judge = sprites32
    images, captions, _ = load_sprites(resolution)
    images = sprites_tensor(images)
    assert SpritesJudge.colors(images[[3, 24]]) == ["orange", "yellow"]  # charmander, pikachu
    right = judge.color_adherence(images, captions)
    assert right["color"] >= 0.97, right
    noisy = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert judge.color_adherence(noisy, captions)["color"] >= 0.9  # a generator's pixel noise does not vote
    assert right["color_clear"] >= 0.97 and 0.5 < right["clear_share"] < 1  # most sprites' colour is a clear call
    wrong = judge.color_adherence(images, _shuffled(captions))
    assert 0.1 < right["chance_color"] < 0.25 and wrong["color"] < right["chance_color"] + 0.08, wrong
    assert wrong["color_clear"] < right["chance_color"] + 0.1, wrong
    blank = judge.color_adherence(torch.ones(2, 3, resolution, resolution), captions[:2])
    assert blank["color"] == 0.0  # nothing drawn: no colour matches


@needs_sprites
def test_sprites_fd_and_diversity_against_real_vs_real(sprites32):
    from evals.sprites import real_halves
    images, _, _, judge = sprites32
    a, b = real_halves(len(images), seed=0)
    assert not set(a) & set(b) and len(a) + len(b) == len(images)
    pca = pca_features(images[a], 32)
    real_fd = frechet_distance(pca(images[a]), pca(images[b]))
    fd = lambda x: frechet_distance(pca(x), pca(images[b]))  # noqa: E731
    # what a bad generator draws: colours lost, upside down, one image for every prompt, noise. (A mild blur is
    # no test here: in the top components of so varied a set, a 5 px blur scores below real-vs-real.)
    gray = images[a].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    noise = torch.rand(images[a].shape, generator=torch.Generator().manual_seed(0))
    collapsed = images[a][:1].expand(len(a), -1, -1, -1)
    assert 0 < real_fd < 1.5 * real_fd < min(fd(gray), fd(images[a].flip(-2)))
    assert max(fd(gray), fd(images[a].flip(-2))) < min(fd(noise), fd(collapsed))
    real_diversity = mean_pairwise_distance(images[b])
    assert 0.5 * real_diversity < mean_pairwise_distance(images[a]) < 2 * real_diversity
    assert mean_pairwise_distance(collapsed[:20]) < 0.01 * real_diversity
