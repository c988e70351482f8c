"""The digits judge: a support-vector classifier trained on the real digits' train split reads which digit a
sample shows. Needs scikit-learn (pip install scikit-learn)."""
import numpy as np
import torch
import torch.nn.functional as F

from t2i_core.data.digits import DIGIT_WORDS, digits_caption, load_digits_arrays, parse_digits_caption

from .images import numpy_images
from .judgement import Evaluation, Judgement


class DigitsJudge:
    """Reads digits with an RBF support-vector classifier trained on the real train split. As a Judge, its
    scores are the adherence per digit.

    Images are averaged to gray and pooled to 8x8 first: the source digits
    are 8x8, so this loses nothing and makes the judge indifferent to the
    fine high-frequency noise a generator may add.
    """

    attributes = DIGIT_WORDS

    def __init__(self, resolution: int = 16, seed: int = 0):
        try:
            from sklearn.svm import SVC
        except ImportError:
            raise ImportError("DigitsJudge needs scikit-learn: pip install scikit-learn") from None
        self.resolution, self.seed = resolution, seed
        images, labels = load_digits_arrays(resolution, "train", seed)
        self.classifier = SVC(C=10.0, gamma="scale").fit(self.features(images), labels.numpy())

    @staticmethod
    def features(images) -> np.ndarray:
        gray = torch.from_numpy(numpy_images(images)).mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(gray, 8).flatten(1).numpy()

    def predict(self, images) -> np.ndarray:
        return self.classifier.predict(self.features(images))

    def heldout_accuracy(self) -> float:
        images, labels = load_digits_arrays(self.resolution, "heldout", self.seed)
        return float(np.mean(self.predict(images) == labels.numpy()))

    def matches(self, images, captions: list[str]) -> np.ndarray:
        """Per image, whether it is read as the digit its caption names."""
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
        return self.predict(images) == np.array([parse_digits_caption(c) for c in captions])

    def adherence(self, images, captions: list[str]) -> float:
        """Fraction of images read as the digit their caption names."""
        return float(np.mean(self.matches(images, captions)))

    def judge(self, images, captions: list[str]) -> Judgement:
        wanted = np.array([parse_digits_caption(c) for c in captions])
        right = self.matches(images, captions)
        return Judgement(float(right.mean()), {word: float(right[wanted == d].mean()) if (wanted == d).any()
                                               else float("nan") for d, word in enumerate(DIGIT_WORDS)})


def digits_evaluation(resolution: int, seed: int = 0) -> Evaluation:
    """Prompts: image i asks for digit i mod 10; real images: the train split and the held-out split."""
    judge = DigitsJudge(resolution, seed)
    train, _ = load_digits_arrays(resolution, "train", seed)
    heldout, labels = load_digits_arrays(resolution, "heldout", seed)
    return Evaluation(judge, lambda n: [digits_caption(i % 10) for i in range(n)], train, heldout,
                      [digits_caption(int(k)) for k in labels],
                      "DigitsJudge, an SVC trained on the real train split, reads which digit a sample shows")
