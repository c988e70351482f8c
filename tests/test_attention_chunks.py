"""Large sizes. Attention over many positions runs in query chunks (t2i_core.unet.attention): below
CHUNK_ABOVE_QUERIES the same single kernel call as before, bit for bit; above it the same values to float
rounding, memory bounded by CHUNK_MAX_SCORES per chunk, and the cancel hook called between chunks. Above
ROW_BY_ROW_ABOVE_POSITIONS the U-Net runs one conditioning row at a time, with the same output."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from t2i_test_utils import cancel_checks_per_forward, make_test_model

from t2i_core import cancel
from t2i_core import unet as unet_module
from t2i_core.pieces import group_norm_scale_shift
from t2i_core.unet import (
    CHUNK_ABOVE_QUERIES,
    CHUNK_MAX_SCORES,
    attention,
    attention_chunk_size,
    attention_kernel,
)


class Stop(Exception):
    pass


def qkv(batch, heads, queries, keys, width=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, queries, width, generator=gen),
            torch.randn(batch, heads, keys, width, generator=gen),
            torch.randn(batch, heads, keys, width, generator=gen))


def padding_mask(batch, keys, real):
    """Additive mask (B, 1, 1, L) as the U-Net builds it: the first `real` keys attended."""
    mask = torch.zeros(batch, 1, 1, keys)
    mask[..., real:] = float("-inf")
    return mask


def test_at_the_threshold_one_kernel_call_gives_the_same_bits_and_no_hook():
    calls = []
    with cancel.calling(lambda: calls.append(1)):
        q, k, v = qkv(2, 2, CHUNK_ABOVE_QUERIES, CHUNK_ABOVE_QUERIES)
        assert attention_chunk_size(q, k) is None
        assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
        q, k, v = qkv(2, 2, CHUNK_ABOVE_QUERIES, 9, seed=1)
        mask = padding_mask(2, 9, 5)
        assert torch.equal(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert calls == []


@pytest.mark.parametrize("n,keys,masked", [(96 * 96, "self", False), (704 * 704, 77, True)])
def test_above_the_threshold_chunks_equal_the_single_call(n, keys, masked):
    # self-attention over 96x96 positions (both forms fit in memory here), and cross-attention from 704x704
    # positions to a padded caption
    q, k, v = qkv(2, 2, n, n if keys == "self" else keys, seed=2)
    mask = padding_mask(2, k.shape[-2], k.shape[-2] // 2) if masked else None
    chunk = attention_chunk_size(q, k)
    assert chunk is not None and chunk < n
    assert 2 * 2 * chunk * k.shape[-2] <= CHUNK_MAX_SCORES  # a chunk's scores stay within the budget
    calls = []
    with cancel.calling(lambda: calls.append(1)):
        chunked = attention(q, k, v, mask)
    assert len(calls) == -(-n // chunk)
    single = attention_kernel(q, k, v, mask)
    torch.testing.assert_close(chunked, single, rtol=1e-5, atol=1e-6)


def test_the_chunk_size_keeps_memory_linear_in_the_queries():
    # more queries, same keys: the same chunk, so the same peak scores; more keys: smaller chunks
    small, large = qkv(1, 2, 8192, 64), qkv(1, 2, 65536, 64)
    assert attention_chunk_size(small[0], small[1]) == attention_chunk_size(large[0], large[1])
    q, k, _ = qkv(1, 2, 65536, 65536, width=1)
    assert attention_chunk_size(q, k) * 2 * 65536 <= CHUNK_MAX_SCORES


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunking from 16 queries on, 4 queries' worth of scores a chunk: a test model's 32 px level chunks."""
    monkeypatch.setattr(unet_module, "CHUNK_ABOVE_QUERIES", 16)
    monkeypatch.setattr(unet_module, "CHUNK_MAX_SCORES", 4 * 2 * 2 * 256)


def unet_inputs():
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([400, 700]), torch.randn(2, 6, 32, generator=gen),
            torch.tensor([[True] * 4 + [False] * 2, [True] * 6]))


def test_the_unet_forward_and_gradients_agree_chunked_and_whole(small_chunks, monkeypatch):
    model = make_test_model()
    x, t, context, key_mask = unet_inputs()
    calls = []

    def forward_backward():
        model.unet.zero_grad(set_to_none=True)
        with model.unet.calling_between_blocks(lambda: calls.append(1)):
            out = model.unet(x, t, context, key_mask)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.unet.parameters() if p.grad is not None]

    chunked_out, chunked_grads = forward_backward()
    unchunked_checks = cancel_checks_per_forward(model.unet)
    assert len(calls) > unchunked_checks  # chunk boundaries as well
    monkeypatch.setattr(unet_module, "CHUNK_ABOVE_QUERIES", 1 << 30)
    calls.clear()
    whole_out, whole_grads = forward_backward()
    assert len(calls) == unchunked_checks
    torch.testing.assert_close(chunked_out, whole_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_raising_between_chunks_stops_inside_an_attention_layer(small_chunks):
    model = make_test_model()
    x, t, context, key_mask = unet_inputs()
    blocks, chunks = [], []

    def chunk_hook():
        chunks.append(1)
        if len(chunks) == 3:
            raise Stop

    # the block hook and the check inside blocks told apart: the inner with-block replaces the latter
    with torch.no_grad(), pytest.raises(Stop), model.unet.calling_between_blocks(lambda: blocks.append(1)), \
            cancel.calling(chunk_hook):
        model.unet(x, t, context, key_mask)
    # the level-0 ResBlock and the downsample ran; then the check before the first attention layer, and that layer
    # stopped after its second chunk
    assert len(blocks) == 2 and len(chunks) == 3
    assert cancel.current_check() is None  # the with-blocks leave no check behind


@pytest.mark.parametrize("shared", [False, True])
def test_row_by_row_at_large_sizes_equals_the_batched_pass(monkeypatch, shared):
    # shared: 2 images read by 4 conditionings ([uncond; cond] as the sampler passes them, a PreparedContext)
    model = make_test_model()
    x, t, context, key_mask = unet_inputs()
    if shared:
        context, key_mask = torch.cat([context, context.flip(0)]), torch.cat([key_mask, key_mask.flip(0)])
        context = model.unet.prepare_context(context, key_mask)
        key_mask = None
    with torch.no_grad():
        batched = model.unet(x, t, context, key_mask)
        monkeypatch.setattr(unet_module, "ROW_BY_ROW_ABOVE_POSITIONS", 16 * 16)
        row_by_row = model.unet(x, t, context, key_mask)
    assert batched.shape[0] == (4 if shared else 2)
    torch.testing.assert_close(row_by_row, batched, rtol=1e-4, atol=1e-5)  # outputs of size ~1: float rounding


@pytest.mark.parametrize("normed", [False, True])
@pytest.mark.parametrize("kernel, stride, padding, size", [(3, 1, 1, (41, 23)), (3, 2, 1, (41, 23)), (3, 2, 1, (40, 24)),
                                                           (1, 1, 0, (37, 20))])
def test_a_large_convolution_in_bands_equals_one_call_and_checks_between_bands(monkeypatch, kernel, stride, padding,
                                                                              size, normed):
    """Also conv(silu(groupnorm(x))), a ResBlock's, whose bands each normalise only the rows they read."""
    torch.manual_seed(0)
    conv = unet_module.Conv2d(6, 5, kernel, stride=stride, padding=padding)
    norm = unet_module.group_norm(6) if normed else None
    if normed:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, *size) * 2 + 1
    with torch.no_grad():
        whole = F.conv2d(F.silu(norm(x)) if normed else x, conv.weight, conv.bias, conv.stride, conv.padding)
        assert torch.equal(conv(x, norm), whole)  # below ROW_BY_ROW_ABOVE_POSITIONS: one call
        monkeypatch.setattr(unet_module, "ROW_BY_ROW_ABOVE_POSITIONS", 16 * 16)
        row_macs = 2 * whole.shape[-1] * 5 * 6 * kernel * kernel
        monkeypatch.setattr(unet_module, "PIECE_MAX_MACS", 4 * row_macs)  # bands of 4 output rows
        checks = []
        with cancel.calling(lambda: checks.append(1)):
            banded = conv(x, norm)
    assert len(checks) == -(-whole.shape[-2] // 4)
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-5 if normed else 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_as_scale_and_shift_equals_the_group_norm(dtype):
    torch.manual_seed(0)
    norm = unet_module.group_norm(64)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 64, 30, 20) * torch.rand(1, 64, 1, 1) * 3 + torch.randn(1, 64, 1, 1) * 4).to(dtype)
    with torch.no_grad():
        scale, shift = group_norm_scale_shift(norm, x)
        assert scale.dtype == shift.dtype == dtype and scale.shape == shift.shape == (2, 64, 1, 1)
        expected = F.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps)
        tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
        torch.testing.assert_close((x * scale + shift).float(), expected, **tolerance)


def test_a_feed_forward_over_many_positions_runs_in_chunks_equal_to_one_call(monkeypatch):
    torch.manual_seed(0)
    ff = unet_module.FeedForward(8)
    x = torch.randn(2, 100, 8)
    assert torch.equal(ff(x), ff.feed(x))  # at most CHUNK_ABOVE_QUERIES positions: one call
    monkeypatch.setattr(unet_module, "CHUNK_ABOVE_QUERIES", 16)
    monkeypatch.setattr(unet_module, "PIECE_MAX_MACS", 2 * 8 * 64 * 3 // 2 * 30)  # 30 positions a chunk
    checks = []
    with cancel.calling(lambda: checks.append(1)):
        chunked = ff(x)
    assert len(checks) == 4
    torch.testing.assert_close(chunked, ff.feed(x), rtol=1e-5, atol=1e-6)


def test_the_unet_in_pieces_at_large_sizes_equals_the_whole_pass(monkeypatch):
    """Convolutions in bands and feed-forwards in chunks of positions (and the row-by-row pass they come with)."""
    model = make_test_model()
    x, t, context, key_mask = unet_inputs()
    checks = []
    with torch.no_grad():
        whole = model.unet(x, t, context, key_mask)
        monkeypatch.setattr(unet_module, "ROW_BY_ROW_ABOVE_POSITIONS", 16 * 16)
        monkeypatch.setattr(unet_module, "CHUNK_ABOVE_QUERIES", 16)
        monkeypatch.setattr(unet_module, "PIECE_MAX_MACS", 1 << 16)
        with cancel.calling(lambda: checks.append(1)):
            in_pieces = model.unet(x, t, context, key_mask)
        monkeypatch.setattr(unet_module, "PIECE_MAX_MACS", 1 << 40)
        with cancel.calling(lambda: checks.append(0)):
            row_by_row = model.unet(x, t, context, key_mask)
    assert sum(checks) > 2 * checks.count(0)  # many more checks: between bands and chunks
    # the pieces normalise with group statistics summed another way than F.group_norm: rounding apart
    torch.testing.assert_close(in_pieces, row_by_row, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(in_pieces, whole, rtol=1e-4, atol=1e-5)


def test_convolutions_in_bands_compute_a_large_call_in_bands_and_leave_the_modules_as_they_were():
    from t2i_core.pieces import convolutions_in_bands, rows_per_band
    torch.manual_seed(0)
    conv, strided = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
    cast = nn.Conv2d(4, 6, 3, padding=1)
    cast.comfy_cast_weights = True  # as ComfyUI's manual-cast ops: their own forward casts the weights
    x = torch.randn(1, 4, 30, 17)
    with torch.no_grad():
        whole = {m: m(x) for m in (conv, strided, cast)}
        max_macs = 5 * 17 * 6 * 4 * 9  # five output rows of `conv` a band
        assert rows_per_band(conv, x, max_macs) == 5
        checks = []
        with cancel.calling(lambda: checks.append(1)), convolutions_in_bands([conv, strided, cast], max_macs):
            banded = {m: m(x) for m in (conv, strided, cast)}
            assert len(checks) == 6 + 2  # 30 rows in bands of 5; the strided 15 rows (9 wide) in bands of 9
            assert conv(x[:, :, :4]).shape == (1, 6, 4, 17)  # a call that fits one band: its own forward
    for m in (conv, strided, cast):
        torch.testing.assert_close(banded[m], whole[m], rtol=1e-5, atol=1e-6)
        assert "forward" not in m.__dict__  # the class's forward again
