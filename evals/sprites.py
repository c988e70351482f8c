"""Judges of the built-in sprites dataset (t2i_core.data.sprites: "an orange fire pokemon, charmander").

* retrieval: is the training image nearest to a generated one (in a PCA space of the training images) the one
  its caption names? top-1 and top-5 against chance (1/N and 5/N for N training images);
* colour adherence: does the generated image's dominant colour (read from its pixels exactly as the dataset's
  captions were made: t2i_core.data.sprites.dominant_color) match the caption's colour? against chance, the
  agreement of two colours drawn independently from the training set's colour frequencies; and the same on the
  clear calls only: the images whose captioned sprite's own colour wins its vote by a margin of CLEAR_MARGIN
  or more (color_margin). On a close call even a faithful copy of the sprite
  often reads a neighbouring hue (half the time under a margin of 0.1), so that figure is the judge's as much as
  the model's;
* FD and diversity (evals.distances) against the same figures for real images: `real_halves` splits the
  sprites in two, so "real-vs-real" compares one half of the real sprites with the other.

Type and name are not read from pixels; retrieval covers the name (each name has one training image).
"""
import numpy as np
import torch

from t2i_core.data.sprites import (
    COLOR_NAMES,
    color_votes,
    dominant_color,
    load_sprites,
    parse_sprites_caption,
)

from .distances import pca_features
from .images import numpy_images
from .judgement import Evaluation, Judgement

RETRIEVAL_COMPONENTS = 64
TOP_K = 5
# A sprite whose own colour wins its vote by this margin has a colour a judge can call; below it neighbouring hues
# (orange and brown, purple and pink) decide the call (docs/QUALITY.md, "sprites", the clear-calls column)
CLEAR_MARGIN = 0.2


def sprites_tensor(images) -> torch.Tensor:
    """load_sprites' uint8 [H, W, 3] arrays (all one size) as the judges' float [N, 3, H, W] in 0..1."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def real_halves(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of range(count), chosen by `seed`: prompts come from the first, and FD is measured
    against the second, so a generator that reproduced its training images scores the real-vs-real FD."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2:])


def color_margin(image: np.ndarray) -> float:
    """How clear a call dominant_color makes: the share of the colourful pixels voting for the winning hue minus
    the runner-up's share (0: a tie, 1: one hue only); 1 for gray, black and blank images, which no vote decides."""
    votes = color_votes(image)
    if votes is None or isinstance(votes, str):
        return 1.0
    shares = np.sort(votes)[::-1] / votes.sum()
    return float(shares[0] - shares[1])



class SpritesJudge:
    """Judges generated sprites against the real training sprites and their captions (one caption each)."""

    def __init__(self, images, captions: list[str], n_components: int = RETRIEVAL_COMPONENTS):
        images = numpy_images(images)
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
        if len(set(captions)) != len(captions):
            raise ValueError("the training captions must be distinct: retrieval looks each one's image up")
        self.captions = list(captions)
        self.row = {c: i for i, c in enumerate(self.captions)}
        self.pca = pca_features(images, min(n_components, len(images) - 1))
        self.features = self.pca(images)
        colors = [parse_sprites_caption(c)["color"] for c in self.captions]
        frequency = np.array([colors.count(name) for name in COLOR_NAMES]) / len(colors)
        self.color_chance = float((frequency ** 2).sum())
        self.clear = {c: color_margin(image.transpose(1, 2, 0)) >= CLEAR_MARGIN for c, image in zip(captions, images)}

    def ranks(self, images, captions: list[str]) -> np.ndarray:
        """Per image, the rank (0 = nearest) of its caption's training image among all training images."""
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
        unknown = [c for c in captions if c not in self.row]
        if unknown:
            raise ValueError(f"caption {unknown[0]!r} is not one of the training captions; retrieval needs the "
                             f"captions of the images the judge was built from")
        queries = self.pca(images)
        # squared L2 distances [B, N] without the [B, N, K] difference tensor
        distances = (queries ** 2).sum(1)[:, None] + (self.features ** 2).sum(1)[None] - 2 * queries @ self.features.T
        wanted = np.array([self.row[c] for c in captions])
        own = distances[np.arange(len(wanted)), wanted]
        return (distances < own[:, None]).sum(1)

    def retrieval(self, images, captions: list[str]) -> dict[str, float]:
        """{"top1", "top5", "chance_top1", "chance_top5"}: fractions of images whose captioned training image
        is the nearest / among the 5 nearest."""
        ranks = self.ranks(images, captions)
        n = len(self.captions)
        return {"top1": float(np.mean(ranks == 0)), f"top{TOP_K}": float(np.mean(ranks < TOP_K)),
                "chance_top1": 1 / n, f"chance_top{TOP_K}": min(TOP_K, n) / n}

    @staticmethod
    def colors(images) -> list[str | None]:
        """The dominant colour each image [B, 3, H, W] shows (None: blank, all background)."""
        return [dominant_color(image.transpose(1, 2, 0)) for image in numpy_images(images)]

    def color_adherence(self, images, captions: list[str]) -> dict[str, float]:
        """{"color", "chance_color", "color_clear", "clear_share"}: the fraction of images whose dominant colour is
        their caption's; the same over the images whose caption is a training sprite with a clear colour
        (`color_clear`, NaN when there are none), and what fraction of the images those are."""
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
        wanted = [parse_sprites_caption(c)["color"] for c in captions]
        right = np.array([a == b for a, b in zip(self.colors(images), wanted)])
        clear = np.array([self.clear.get(c, False) for c in captions])
        return {"color": float(right.mean()), "chance_color": self.color_chance,
                "color_clear": float(right[clear].mean()) if clear.any() else float("nan"),
                "clear_share": float(clear.mean())}

    attributes = ("top-1", f"top-{TOP_K}", "colour", "colour, clear calls")

    def matches(self, images, captions: list[str]) -> np.ndarray:
        """Per image, whether the nearest training sprite is the captioned one (top-1)."""
        return self.ranks(images, captions) == 0

    def judge(self, images, captions: list[str]) -> Judgement:
        """Retrieval and colour adherence together; adherence is top-1 (the nearest training sprite is the
        captioned one)."""
        r, c = self.retrieval(images, captions), self.color_adherence(images, captions)
        return Judgement(r["top1"], dict(zip(self.attributes, (r["top1"], r[f"top{TOP_K}"], c["color"],
                                                                c["color_clear"]))))


def sprites_evaluation(resolution: int) -> Evaluation:
    """Prompts: the captions of one half of the sprites (real_halves; image i: sprite i mod the half); real
    images: that half, and the other half to compare with."""
    arrays, captions, _ = load_sprites(resolution)
    real = sprites_tensor(arrays)
    judge = SpritesJudge(real, captions)
    first, second = real_halves(len(real))
    chance = judge.retrieval(real[:1], captions[:1])
    return Evaluation(judge, lambda n: [captions[first[i % len(first)]] for i in range(n)], real[first], real[second],
                      [captions[i] for i in second],
                      f"retrieval: the captioned sprite is the nearest of all {len(real)} in a "
                      f"{judge.features.shape[1]}-component PCA space (top-1, chance {chance['chance_top1']:.2%}) or "
                      f"among the {TOP_K} nearest (chance {chance[f'chance_top{TOP_K}']:.1%}); colour: the dominant "
                      f"colour read from the pixels is the caption's (chance {judge.color_chance:.1%}), also over "
                      f"the clear calls only (margin {CLEAR_MARGIN:g})")
