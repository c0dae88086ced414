"""EncoderConfig's fields for MPNet and ModernBERT: files of earlier converters (without them) load as before,
and inconsistent values are ModelFileErrors; the converter refuses what the runtime cannot run."""

from __future__ import annotations

import pytest
from tinybert_convert.architectures import encoder_config

from fuzz.seeds import encoder_config as bert_seed
from fuzz.seeds import modernbert_config
from tinybert.config import EncoderConfig, TaskConfig
from tinybert.errors import ModelFileError, UnsupportedModelError

NEW_FIELDS = ("positions", "rope", "relative_buckets", "relative_max_distance", "pre_norm", "first_attn_norm",
              "gated_mlp", "window", "window_layers", "window_rope", "disentangled", "rel_norm")


def test_a_file_of_an_earlier_converter_loads_as_before():
    data = bert_seed().to_dict()
    assert not set(data) & set(NEW_FIELDS), "a BERT-family file is written as before the new fields"
    old = {k: v for k, v in data.items() if k not in NEW_FIELDS}
    cfg = EncoderConfig.from_dict(old)
    assert cfg == bert_seed()
    block = cfg.block
    assert (block.positions, block.pre_norm, block.gated_mlp, block.has_relative_bias, block.layer_windows) == \
        ("learned", False, False, False, ())
    assert EncoderConfig.from_dict(modernbert_config().to_dict()) == modernbert_config()
    assert set(NEW_FIELDS) - set(modernbert_config().to_dict()) == {"relative_buckets", "relative_max_distance",
                                                                         "disentangled", "rel_norm"}


@pytest.mark.parametrize("changes, words", [
    ({"window": 0}, "window and window_layers"),
    ({"window_layers": ()}, "window and window_layers"),
    ({"window_layers": (2,)}, "window_layers"),
    ({"window_layers": (1, 1)}, "window_layers"),
    ({"pre_norm": False}, "first_attn_norm"),
    ({"positions": "sinusoidal"}, "positions"),
    ({"positions": "learned", "rope": None}, "local_rope needs rotary"),
    ({"rope": None}, "rope"),
    ({"relative_buckets": 3, "relative_max_distance": 16}, "relative"),
])
def test_inconsistent_encoder_configs_are_refused(changes, words):
    data = {**modernbert_config().to_dict(), **changes}
    data["window_layers"] = list(data["window_layers"])
    with pytest.raises(ModelFileError, match=words):
        EncoderConfig.from_dict(data)


@pytest.mark.parametrize("fields, words", [
    ({"pooling": "max"}, "pooling"),
    ({"pooler_norm_eps": 1e-5}, "pooler_norm_eps"),
    ({"pooler_activation": "gelu", "pooler_norm_eps": 0.0}, "pooler_norm_eps"),
])
def test_inconsistent_tasks_are_refused(fields, words):
    with pytest.raises(ModelFileError, match=words):
        TaskConfig.from_dict({"type": "sequence-classification", "labels": ["a", "b"], **fields})


MPNET = {"model_type": "mpnet", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 66, "hidden_act": "gelu",
         "layer_norm_eps": 1e-5, "pad_token_id": 1, "relative_attention_num_buckets": 32}
MODERNBERT = {"model_type": "modernbert", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 4,
              "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 256,
              "hidden_activation": "gelu", "norm_eps": 1e-5, "pad_token_id": 0, "global_attn_every_n_layers": 3,
              "local_attention": 128, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}


def test_converter_maps_mpnet_and_modernbert_configs():
    mpnet = encoder_config(MPNET)
    assert (mpnet.relative_buckets, mpnet.relative_max_distance, mpnet.position_scheme, mpnet.max_length) == \
        (32, 128, "padding_offset", 64)
    # A config.json of before transformers 5 (global_attn_every_n_layers, two theta keys) maps as
    # ModernBertConfig maps it: layers 0 and 3 global, 1 and 2 local with a ±64 window.
    modern = encoder_config(MODERNBERT)
    assert (modern.window, modern.window_layers) == (64, (1, 2))
    assert (modern.rope["theta"], modern.window_rope["theta"]) == (160000.0, 10000.0)
    assert (modern.pre_norm, modern.first_attn_norm, modern.gated_mlp, modern.positions) == (True, False, True, "rope")
    from transformers import ModernBertConfig

    hf = ModernBertConfig(**{k: v for k, v in MODERNBERT.items() if k != "model_type"})
    assert [i for i, t in enumerate(hf.layer_types) if t == "sliding_attention"] == [1, 2]
    assert hf.sliding_window == modern.window
    # transformers 5's own config.json (layer_types, rope_parameters) maps the same way
    assert encoder_config({**hf.to_dict(), "model_type": "modernbert"}) == modern


@pytest.mark.parametrize("config, words", [
    ({**MPNET, "relative_attention_num_buckets": 16}, "32"),
    ({**MODERNBERT, "layer_types": ["full_attention", "chunked"]}, "layer_types"),
    ({**MODERNBERT, "classifier_pooling": "max"}, "classifier_pooling"),
    ({**MODERNBERT, "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}, "rope"),
])
def test_converter_refuses_what_the_runtime_cannot_run(config, words):
    with pytest.raises(UnsupportedModelError, match=words):
        encoder_config(config)
