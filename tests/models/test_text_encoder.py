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
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = UMT5Config(
        vocab_size=len(vocab),
        d_model=d_model,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
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


# --- Wan's own T5 checkpoint (models_t5_umt5-xxl-enc-bf16.pth) --------------------------------------


def wan_t5_weights(vocab, dim=16, heads=4, ffn=24, layers=2, buckets=8, seed=0):
    """Random weights in Wan's T5 encoder key layout (wan/modules/t5.py, shared_pos=False)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    state = {"token_embedding.weight": r(vocab, dim), "norm.weight": 1 + r(dim)}
    for i in range(layers):
        b = f"blocks.{i}."
        state |= {
            b + "norm1.weight": 1 + r(dim),
            b + "norm2.weight": 1 + r(dim),
            b + "pos_embedding.embedding.weight": r(buckets, heads),
            b + "ffn.gate.0.weight": r(ffn, dim),
            b + "ffn.fc1.weight": r(ffn, dim),
            b + "ffn.fc2.weight": r(dim, ffn),
        }
        state |= {b + f"attn.{n}.weight": r(dim, dim) for n in "qkvo"}
    return state


def wan_buckets(n, buckets, max_dist):
    """Wan's bidirectional relative-position buckets [query, key] of an n-token sequence."""
    import math

    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    half = buckets // 2
    bucket = (rel > 0).long() * half
    rel, exact = rel.abs(), half // 2
    large = exact + (torch.log(rel.double().clamp(min=1) / exact) / math.log(max_dist / exact) * (half - exact)).long()
    return bucket + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def wan_t5_reference(state, ids, mask, heads=4, buckets=8, max_dist=128):
    """Wan's T5 encoder restated in float64: RMSNorm, unscaled attention with a per-layer
    bidirectional relative-position bias, FFN fc2(fc1(x) * gelu_tanh(gate(x)))."""
    s = {k: v.double() for k, v in state.items()}
    n = ids.shape[1]
    norm = lambda x, w: w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    bucket = wan_buckets(ids.shape[1], buckets, max_dist)
    x = s["token_embedding.weight"][ids]
    bsz, dim = x.shape[0], x.shape[-1]
    masked = (mask == 0)[:, None, None, :]
    i = 0
    while f"blocks.{i}.norm1.weight" in s:
        w = lambda k: s[f"blocks.{i}.{k}.weight"]  # noqa: E731,B023
        h = norm(x, w("norm1"))
        q, k, v = ((h @ w(f"attn.{c}").T).view(bsz, n, heads, -1).transpose(1, 2) for c in "qkv")
        logits = q @ k.transpose(-1, -2) + w("pos_embedding.embedding")[bucket].permute(2, 0, 1)
        logits = logits.masked_fill(masked, torch.finfo(torch.float64).min)
        att = (logits.softmax(-1) @ v).transpose(1, 2).reshape(bsz, n, dim)
        x = x + att @ w("attn.o").T
        h = norm(x, w("norm2"))
        gate = torch.nn.functional.gelu(h @ w("ffn.gate.0").T, approximate="tanh")
        x = x + ((h @ w("ffn.fc1").T) * gate) @ w("ffn.fc2").T
        i += 1
    return norm(x, s["norm.weight"])


def save_wan_release(folder, state):
    """A Wan release folder: the T5 .pth and the tokenizer under google/umt5-xxl/."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    save_tiny_umt5(folder / "google" / "umt5-xxl")  # (its tokenizer; the encoder files are unused)


def test_wan_t5_checkpoint_matches_wan_math(tmp_path):
    """Wan's own .pth, mapped onto transformers' UMT5EncoderModel, computes Wan's T5 encoder:
    equal to a float64 restatement within 1e-5 (float32). Swapping the FFN's gate and fc1 (the
    easy mistake: transformers calls them wi_0 / wi_1) breaks it."""
    pytest.importorskip("transformers")
    state = wan_t5_weights(vocab=len(WORDS) + 3)
    save_wan_release(tmp_path, state)
    for path in (tmp_path, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"):
        encoder = UMT5TextEncoder.from_pretrained(path, text_len=TEXT_LEN)
        states = encoder(["a red ball", "blue square slides right on green grass"])
        tokens = encoder.tokenizer(
            ["a red ball", "blue square slides right on green grass"],
            padding="max_length",
            max_length=TEXT_LEN,
            return_tensors="pt",
        )
        ref = wan_t5_reference(state, tokens.input_ids, tokens.attention_mask)
        ref = ref * tokens.attention_mask[..., None]
        torch.testing.assert_close(states.double(), ref, rtol=1e-5, atol=1e-5)
    swapped = dict(state)
    for i in range(2):
        swapped[f"blocks.{i}.ffn.fc1.weight"] = state[f"blocks.{i}.ffn.gate.0.weight"]
        swapped[f"blocks.{i}.ffn.gate.0.weight"] = state[f"blocks.{i}.ffn.fc1.weight"]
    ref = wan_t5_reference(swapped, tokens.input_ids, tokens.attention_mask) * tokens.attention_mask[..., None]
    assert not torch.allclose(states.double(), ref, rtol=1e-3, atol=1e-3)


def test_wan_t5_buckets_at_umt5_xxl_size(tmp_path):
    """At UMT5-XXL's sizes (32 buckets, Wan's 512 tokens) the loaded encoder buckets relative
    positions as Wan does: a wrong max distance (the tiny test above cannot see one) fails."""
    pytest.importorskip("transformers")
    state = wan_t5_weights(vocab=len(WORDS) + 3, buckets=32)
    save_wan_release(tmp_path, state)
    encoder = UMT5TextEncoder.from_pretrained(tmp_path, text_len=TEXT_LEN).encoder
    attention = encoder.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(512)[None, :] - torch.arange(512)[:, None]
    assert torch.equal(attention._relative_position_bucket(rel), wan_buckets(512, 32, 128))
    assert not torch.equal(wan_buckets(512, 32, 128), wan_buckets(512, 32, 64))


def test_wan_t5_checkpoint_errors_name_the_problem(tmp_path):
    pytest.importorskip("transformers")
    state = wan_t5_weights(vocab=len(WORDS) + 3)
    del state["blocks.1.attn.k.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(1)
    save_wan_release(tmp_path, state)
    with pytest.raises(ValueError, match=r"enc-bf16\.pth: .*blocks\.1\.attn\.k\.weight.*blocks\.0\.extra\.weight"):
        UMT5TextEncoder.from_pretrained(tmp_path, text_len=TEXT_LEN)
    (tmp_path / "lone").mkdir()
    torch.save(wan_t5_weights(vocab=len(WORDS) + 3), tmp_path / "lone" / "t5.pth")
    with pytest.raises(FileNotFoundError, match="umt5-xxl"):  # no tokenizer next to the file
        UMT5TextEncoder.from_pretrained(tmp_path / "lone" / "t5.pth", text_len=TEXT_LEN)


def test_a_cut_prompt_is_said_once(umt5_folder):
    """A prompt longer than the encoder's tokens is cut; base b543e33 did so silently."""
    hashed = HashedTextEncoder(8, text_len=4)
    with pytest.warns(UserWarning, match="longer than the text encoder's 4 tokens"):
        hashed(["one two three four five"])
    encoder = UMT5TextEncoder.from_pretrained(umt5_folder, text_len=8)
    with pytest.warns(UserWarning, match="8 tokens"):
        encoder(["word " * 100_000])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder(["a short prompt"])  # fits: no warning
        hashed(["one two three four"])
