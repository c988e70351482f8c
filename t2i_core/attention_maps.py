"""Where each word lands: the cross-attention maps of a prompt's words (the idea of DAAM, Tang et al. 2023).

Every cross-attention layer asks, for each image position, which of the prompt's tokens are relevant:

    P = softmax(Q K^T / sqrt(d))        (positions x tokens, one row per position, summing to 1)

`record_attention` records P for the conditional prompt while the ordinary sampler runs, and averages it over
the heads, over the layers (each layer's map upsampled to the latent's size, so a 4x4 layer and an 8x8 layer
count the same) and over the steps whose progress 1 - t/T (0 = pure noise, 1 = clean, the sampler's
guidance_interval convention) lies in the chosen range. The result is one map per token: at every latent
position the share of attention that token got, so the maps of all tokens (start, end of text included) sum to 1
there. `prompt_words` groups the tokens into the prompt's words (CLIP's BPE and BERT's WordPiece split rare words
into pieces, whose maps add up), and `render_word_maps` lays each word's map over the generated image, labelled with the word.

Recording costs nothing while it is off: CrossAttention checks one attribute per call. While it is on, it
computes P a second time beside the attention kernel (which never returns it), for the conditional half of
CFG's [uncond; cond] batch only; the sampled images are exactly those of a run without it.

The picture is made here, not in nodes/ (no logic there) nor evals/ (judges): the map and its picture are one
idea, and like plot.py's loss curve it is plain PIL, so the command line and tests get the same image the node
shows.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .conditioning import Conditioning, match_batch
from .unet import TextConditionedUNet

# ---- recording ----


class AttentionRecorder:
    """Sums the conditional prompt's cross-attention probabilities over heads, layers and chosen steps."""

    def __init__(self, unet: TextConditionedUNet, num_train_timesteps: int, progress: tuple[float, float] = (0.0, 1.0)):
        start, end = progress
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"the steps to average must be a range (start, end) with 0 <= start <= end <= 1 "
                             f"(0 = pure noise, 1 = clean), got {progress}")
        self.unet, self.total_t, self.progress = unet, num_train_timesteps, (start, end)
        self.layers = [block.attn2 for stage in unet.stages() if stage.attn is not None for block in stage.attn.blocks]
        self.sum: torch.Tensor | None = None  # (B, L, h, w)
        self.layer_maps = 0  # layer maps summed (layers x recorded steps)
        self.steps = 0  # U-Net passes recorded
        self._recording = False
        self._batch = 0
        self._size = (0, 0)

    def _on_forward(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        t = args[1] if len(args) > 1 else kwargs["t"]
        start, end = self.progress
        progress = 1 - float(t.reshape(-1)[0]) / self.total_t
        self._recording = start <= progress <= end
        self._batch, self._size = x.shape[0], tuple(x.shape[-2:])
        self.steps += self._recording

    def _on_attention(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None):
        if not self._recording:
            return
        b = self._batch  # the images; with CFG the rows are [uncond; cond], and the prompt's are the last b

        def cond_rows(t):
            return t[-b:] if t.shape[0] > b else t
        q, k = cond_rows(q).float(), cond_rows(k).float()
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, N, L)
        if mask is not None:
            mask = cond_rows(mask)
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        probs = scores.softmax(dim=-1).mean(dim=1)  # over heads: (B, N, L)
        height, width = self._size
        factor = round((height * width / probs.shape[1]) ** 0.5)  # this layer's downsampling
        h, w = height // factor, width // factor
        maps = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], h, w)
        if (h, w) != (height, width):
            maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        self.sum = maps if self.sum is None else self.sum + maps
        self.layer_maps += 1

    def maps(self) -> torch.Tensor:
        """(B, L, h, w) at the latent's size: the attention each position gave each token, averaged."""
        if self.sum is None:
            raise ValueError(f"no sampling step fell within the range {self.progress} of steps to average (0 = pure "
                             "noise, 1 = clean): widen it, or use more steps")
        return (self.sum / self.layer_maps).cpu()


@contextlib.contextmanager
def record_attention(unet: TextConditionedUNet, num_train_timesteps: int, progress: tuple[float, float] = (0.0, 1.0)):
    """Record the cross-attention of every U-Net pass inside the block (e.g. one `sampler.sample` run):

        with record_attention(model.unet, model.schedule.cfg.num_train_timesteps, (0.0, 1.0)) as recorder:
            images = model.generate(...)
        maps = recorder.maps()
    """
    recorder = AttentionRecorder(unet, num_train_timesteps, progress)
    handle = unet.register_forward_pre_hook(recorder._on_forward, with_kwargs=True)
    for layer in recorder.layers:
        layer.attention_probs_hook = recorder._on_attention
    try:
        yield recorder
    finally:
        handle.remove()
        for layer in recorder.layers:
            del layer.attention_probs_hook  # back to the class's None


# ---- tokens -> words ----


@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]  # where its tokens sit in the prompt's encoding


@lru_cache(maxsize=1)
def clip_tokenizer():
    """CLIP's BPE tokenizer (its vocabulary ships inside open_clip): the one the pack's text encoders use, and the
    vocabulary of the CLIP text towers ComfyUI loads."""
    import open_clip
    return open_clip.tokenizer.SimpleTokenizer()


def prompt_words(tokens: Sequence[int], tokenizer=None) -> list[Word]:
    """The prompt's words from its token ids: start-of-text is skipped, end-of-text ends the prompt (padding
    follows it), and the BPE pieces of one word (the last ends in '</w>') are merged. A transformers tokenizer
    (a BERT encoder's) goes to wordpiece_words."""
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return wordpiece_words(tokens, tokenizer)
    tokenizer = tokenizer or clip_tokenizer()
    words, pieces, positions = [], [], []
    for position, token in enumerate(int(t) for t in tokens):
        if token == tokenizer.sot_token_id:
            continue
        if token == tokenizer.eot_token_id:
            break
        piece = tokenizer.decoder[token]
        pieces.append(piece)
        positions.append(position)
        if piece.endswith("</w>"):
            text = bytearray(tokenizer.byte_decoder[c] for c in "".join(pieces)[: -len("</w>")])
            words.append(Word(text.decode("utf-8", errors="replace"), tuple(positions)))
            pieces, positions = [], []
    return words


def wordpiece_words(tokens: Sequence[int], tokenizer) -> list[Word]:
    """prompt_words for BERT's WordPiece: [CLS] is skipped, [SEP] ends the prompt, and a piece written '##...'
    continues the word before it."""
    words: list[Word] = []
    for position, token in enumerate(int(t) for t in tokens):
        if token == tokenizer.cls_token_id:
            continue
        if token in (tokenizer.sep_token_id, tokenizer.pad_token_id):
            break
        piece = tokenizer.convert_ids_to_tokens(token)
        if piece.startswith("##") and words:
            words[-1] = Word(words[-1].text + piece[2:], (*words[-1].positions, position))
        else:
            words.append(Word(piece, (position,)))
    return words


def tokens_per_image(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """(prompts, L) token ids -> (batch, L), each image given its prompt's by the sampler's rule (match_batch)."""
    return match_batch(Conditioning(tokens[:, :, None]), batch, "prompt tokens").context[:, :, 0]


@dataclass
class WordMaps:
    """One image's words and their maps (words, H, W): at each pixel the share of the attention the word got."""
    words: list[str]
    maps: torch.Tensor

    @property
    def shares(self) -> torch.Tensor:
        """Each word's share of the attention, averaged over the image."""
        return self.maps.mean(dim=(1, 2))


def word_maps(token_maps: torch.Tensor, tokens: torch.Tensor, size: tuple[int, int] | None = None,
              tokenizer=None) -> list[WordMaps]:
    """Per image: its words' maps, the sum of their tokens' maps, upsampled to `size` (the image's (H, W)).

    token_maps: (B, L, h, w) from AttentionRecorder.maps(); tokens: (B, L') the ids of each image's prompt."""
    if size is not None and tuple(size) != tuple(token_maps.shape[-2:]):
        token_maps = F.interpolate(token_maps, size=tuple(size), mode="bilinear", align_corners=False)
    out = []
    for maps, ids in zip(token_maps, tokens):
        words = [w for w in prompt_words(ids.tolist(), tokenizer) if max(w.positions) < maps.shape[0]]
        stacked = torch.stack([maps[list(w.positions)].sum(0) for w in words]) if words else maps[:0]
        out.append(WordMaps([w.text for w in words], stacked))
    return out


# ---- the picture ----

# A perceptually ordered dark-to-bright ramp (anchors of matplotlib's "inferno"): low attention stays dark, so
# the image shows through, high attention is bright.
HEAT_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)]) / 255
LABEL_HEIGHT = 14
MAX_LABEL_CHARS = 18


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 (any shape) -> RGB in 0..1 (shape + (3,)) along HEAT_ANCHORS."""
    x = np.clip(values, 0, 1) * (len(HEAT_ANCHORS) - 1)
    i = np.minimum(x.astype(int), len(HEAT_ANCHORS) - 2)
    frac = (x - i)[..., None]
    return HEAT_ANCHORS[i] * (1 - frac) + HEAT_ANCHORS[i + 1] * frac


def render_word_maps(image: torch.Tensor, word_maps: WordMaps, tile: int = 128, opacity: float = 0.6) -> torch.Tensor:
    """(words, 3, H', W') in 0..1: per word, its map over the image, labelled below with the word and its share of
    the attention. Each map is stretched from its own minimum (dark) to its maximum (bright): every position gives
    every word some attention, so the contrast is in the differences, and the label keeps the absolute share. The image is enlarged by a whole factor to about `tile` pixels
    (nearest: the pixels stay sharp), the map smoothly (it is coarser than the image)."""
    _, height, width = image.shape
    scale = max(1, tile // max(height, width))
    size = (height * scale, width * scale)
    base = F.interpolate(image[None].float().cpu(), size=size, mode="nearest")[0].permute(1, 2, 0).numpy()
    maps = word_maps.maps.float().cpu()
    if len(maps):
        maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    font = ImageFont.load_default()
    tiles = []
    for text, m, share in zip(word_maps.words, maps, word_maps.shares.tolist()):
        m = m.numpy()
        low, high = float(m.min()), float(m.max())
        heat = heat_colors((m - low) / max(high - low, 1e-8))
        blended = (1 - opacity) * base + opacity * heat
        canvas = Image.new("RGB", (size[1], size[0] + LABEL_HEIGHT), "black")
        canvas.paste(Image.fromarray((np.clip(blended, 0, 1) * 255).round().astype(np.uint8)), (0, 0))
        label = text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "~"
        ImageDraw.Draw(canvas).text((2, size[0] + 1), f"{label} {share:.0%}", fill="white", font=font)
        tiles.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(tiles) if tiles else torch.zeros(0, 3, size[0] + LABEL_HEIGHT, size[1])


def render_batch(images: torch.Tensor, per_image: Sequence[WordMaps], tile: int = 128,
                 opacity: float = 0.6) -> torch.Tensor:
    """All images' word tiles in one batch (image 0's words, then image 1's, ...), as render_word_maps draws them."""
    tiles = [render_word_maps(image, maps, tile, opacity) for image, maps in zip(images, per_image)]
    if not tiles or not sum(len(t) for t in tiles):
        raise ValueError("the prompt has no words to map (it is empty): give a prompt with words")
    return torch.cat(tiles)


# ---- the whole run ----


def generate_with_attention(model, prompts: str | Sequence[str], *, progress: tuple[float, float] = (0.0, 1.0),
                            seeds: Sequence[int] | int = 0, **generate_kwargs) -> tuple[torch.Tensor, list[WordMaps]]:
    """`model.generate(prompts, seeds=seeds, ...)` (a pipeline.T2IModel) while recording: (images (B, 3, H, W),
    one WordMaps per image at the image's size), the steps in `progress` averaged."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = model.text_encoder.encode(prompts).tokens
    if tokens is None:
        raise ValueError("this text encoder does not report its tokens, so the prompt's words are unknown; use one "
                         "of the pack's own text encoders")
    with record_attention(model.unet, model.schedule.cfg.num_train_timesteps, progress) as recorder:
        images = model.generate(prompts, seeds=seeds, **generate_kwargs)
    return images, word_maps(recorder.maps(), tokens_per_image(tokens, len(images)), tuple(images.shape[-2:]),
                             getattr(model.text_encoder, "tokenizer", None))
