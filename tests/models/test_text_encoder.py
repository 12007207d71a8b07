"""Prompt encoders: the UMT5 encoder from local files (a tiny random UMT5 and a word-level
tokenizer built offline) gives Wan's zero-padded states; the hashed stand-in is deterministic;
empty prompts are errors."""
import pytest
import torch

from reward_forcing.models.text_encoder import HashedTextEncoder, UMT5TextEncoder, clean_prompt

WORDS = "a red ball rolls left blue square slides right on green grass".split()
TEXT_LEN = 8


def save_tiny_umt5(folder, d_model=16):
    """A random 2-layer UMT5 encoder and a word-level tokenizer (ids: pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    config = UMT5Config(vocab_size=len(vocab), d_model=d_model, d_kv=4, d_ff=32, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    torch.manual_seed(0)
    UMT5EncoderModel(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def umt5_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("umt5")
    save_tiny_umt5(folder)
    return folder


def test_umt5_states_are_zero_padded(umt5_folder):
    encoder = UMT5TextEncoder.from_pretrained(umt5_folder, text_len=TEXT_LEN)
    states = encoder(["a red ball", "Blue  square slides right on grass"])
    assert states.shape == (2, TEXT_LEN, 16) and encoder.dim == 16
    real = [4, 7]  # words + end-of-sequence token
    for b, n in enumerate(real):
        assert states[b, :n].abs().amin(-1).gt(0).all() and not states[b, n:].any()
    # the real tokens' states are those of the unpadded sequence (padding is masked out)
    ids = torch.tensor([[3, 4, 5, 1]])
    with torch.no_grad():
        alone = encoder.encoder(ids, torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(states[0, :4], alone[0])


def test_umt5_truncates_to_text_len(umt5_folder):
    encoder = UMT5TextEncoder.from_pretrained(umt5_folder, text_len=TEXT_LEN)
    states = encoder(" ".join(WORDS))  # 12 words: cut to 7 + end of sequence
    assert states.shape == (1, TEXT_LEN, 16) and states.abs().amin(-1).gt(0).all()


def test_umt5_loads_a_diffusers_pipeline_layout(umt5_folder, tmp_path):
    save_tiny_umt5(tmp_path / "text_encoder")
    save_tiny_umt5(tmp_path / "tokenizer")
    a = UMT5TextEncoder.from_pretrained(tmp_path, text_len=TEXT_LEN)("a red ball")
    b = UMT5TextEncoder.from_pretrained(umt5_folder, text_len=TEXT_LEN)("a red ball")
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="config.json"):
        UMT5TextEncoder.from_pretrained(tmp_path / "nothing")


def test_empty_prompts_are_errors(umt5_folder):
    encoder = UMT5TextEncoder.from_pretrained(umt5_folder, text_len=TEXT_LEN)
    for bad in ("", "  \n\t", ["a red ball", ""]):
        with pytest.raises(ValueError, match="empty"):
            encoder(bad)
        with pytest.raises(ValueError, match="empty"):
            HashedTextEncoder(16, TEXT_LEN)(bad)
    with pytest.raises(ValueError, match="no prompts"):
        encoder([])


def test_clean_prompt():
    assert clean_prompt("  a &amp;  red\n ball ") == "a & red ball"


def test_hashed_encoder_is_deterministic():
    a = HashedTextEncoder(16, TEXT_LEN, seed=0)(["a red ball", "a blue square"])
    b = HashedTextEncoder(16, TEXT_LEN, seed=0)("A red   ball")
    assert a.shape == (2, TEXT_LEN, 16)
    assert torch.equal(a[:1], b) and not torch.equal(a[0], a[1])
    assert a[0, :3].abs().sum(-1).gt(0).all() and not a[0, 3:].any()
    assert not torch.equal(HashedTextEncoder(16, TEXT_LEN, seed=1)("a red ball"), b)
