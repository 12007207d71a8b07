"""``reward-forcing generate``: writes a playable H.264 mp4 with the expected frames (random tiny
model, timed prompt switches, and local checkpoint/text-encoder/VAE folders); bad arguments give
one line on stderr and status 2; nothing is left behind when writing fails."""

import dataclasses
import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")
av = pytest.importorskip("av")

from reward_forcing import video_io  # noqa: E402
from reward_forcing.cli import main  # noqa: E402
from reward_forcing.video_io import write_mp4  # noqa: E402

SIZE = ["--height", "32", "--width", "48"]
SMALL = ["--random-model", *SIZE]


def read_video(path):
    frames, fps, codec = video_io.read_video(path)
    return codec, fps, frames


def leftovers(folder, out):
    return [p.name for p in folder.iterdir() if p.name != out.name]


def test_generate_with_the_random_model(tmp_path, capsys):
    out = tmp_path / "video.mp4"
    assert main(["generate", "--prompt", "a red ball", "--seconds", "1.5", "--out", str(out), *SMALL]) == 0
    codec, fps, frames = read_video(out)
    assert (codec, fps, frames.shape) == ("h264", 16.0, (24, 32, 48, 3))
    assert frames.std() > 1  # not a blank video
    err = capsys.readouterr().err
    assert "RANDOM" in err and "wrote 24 frames" in err
    assert leftovers(tmp_path, out) == []


def test_embedded_model_warns_in_one_line_about_unknown_words(tmp_path, capsys, monkeypatch):
    import torch

    from reward_forcing.models import default as default_model
    from reward_forcing.models.causal_wan import CausalWanModel
    from reward_forcing.models.wan_config import WAN_WORLD

    torch.manual_seed(0)
    settings = dict(height=64, width=64, fps=16.0, sink_frames=1, window_frames=2, chunk_frames=2)
    weights = tmp_path / "world.safetensors"
    default_model.export(
        CausalWanModel(WAN_WORLD), settings | dict(alpha=0.999, steps=[1000.0, 500.0], shift=3.0), weights
    )
    monkeypatch.setattr(default_model, "WEIGHTS", weights)
    out = tmp_path / "video.mp4"
    prompt = "a red dragon flying to the right on a black background"
    assert main(["generate", "--prompt", prompt, "--seconds", "0.5", "--out", str(out)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "dragon" in line]
    unknown = f"the word(s) dragon, flying in {prompt!r}: they will be ignored or misread"
    assert warned == [f"reward-forcing: warning: the model was not trained on {unknown}"]


def test_timed_prompt_switches(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# time<TAB>prompt\n0\ta red ball\n\n0.75\ta blue square slides right\n")
    out = tmp_path / "switch.mp4"
    assert (
        main(
            [
                "generate",
                "--prompts",
                str(prompts),
                "--seconds",
                "2",
                "--out",
                str(out),
                "--fps",
                "8",
                "--recache",
                *SMALL,
            ]
        )
        == 0
    )
    _, fps, frames = read_video(out)
    assert fps == 8.0 and frames.shape[0] == 16


def save_tiny_wan_folders(root):
    """A Wan-format transformer folder, a UMT5 folder and a VAE folder, all tiny and random."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel
    from safetensors.torch import save_file

    from reward_forcing.models import WAN_TINY, CausalWanModel
    from reward_forcing.models.vae import tiny_random_wan_vae

    config = dataclasses.replace(WAN_TINY, text_dim=16)
    (root / "wan").mkdir()
    save_file(CausalWanModel(config).state_dict(), root / "wan" / "diffusion_pytorch_model.safetensors")
    (root / "wan" / "config.json").write_text(json.dumps({"num_heads": config.num_heads, "text_len": config.text_len}))
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "ball": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(root / "umt5")
    UMT5EncoderModel(
        UMT5Config(
            vocab_size=4, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, relative_attention_num_buckets=8
        )
    ).save_pretrained(root / "umt5")
    tiny_random_wan_vae().save_pretrained(root / "vae")
    return root / "wan", root / "umt5", root / "vae"


def test_generate_from_local_weights(tmp_path, capsys):
    pytest.importorskip("transformers")
    wan, umt5, vae = save_tiny_wan_folders(tmp_path)
    out = tmp_path / "weights.mp4"
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a ball",
                "--seconds",
                "1",
                "--out",
                str(out),
                "--checkpoint",
                str(wan),
                "--text-encoder",
                str(umt5),
                "--vae",
                str(vae),
                "--sink-frames",
                "0",
                "--alpha",
                "1",
                *SIZE,
            ]
        )
        == 0
    )
    assert read_video(out)[2].shape == (16, 32, 48, 3)
    assert "RANDOM" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "  "], "empty"),
        (["--prompt", "x", "--seconds", "0"], "must be > 0"),
        (["--prompt", "x", "--seconds", "-2"], "must be > 0"),
        (["--prompt", "x", "--no-such-option"], "unrecognized arguments"),
        (["--seconds", "1"], "no prompt"),
        (
            ["--prompt", "x", "--checkpoint", "missing.safetensors", "--text-encoder", ".", "--vae", "."],
            "does not exist",
        ),
        (["--prompt", "x", "--checkpoint", "."], "together"),
        (["--prompt", "x", "--prompts", "missing.txt"], "does not exist"),
        (["--prompt", "x", "--height", "42"], "multiples of"),
        (["--prompt", "x", "--random-model", "--height", "40"], "multiples of 16"),
        (
            ["--prompt", "x", "--random-model", "--checkpoint", ".", "--text-encoder", ".", "--vae", "."],
            "exclude each other",
        ),
        (["--prompt", "x", "--sink-frames", "-1"], "sink_frames"),
        (["--prompt", "x", "--device", "nonsense"], "--device"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "bad.mp4"
    try:
        code = main(["generate", "--out", str(out), *args])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "warning:" not in line]
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and leftovers(tmp_path, out) == []


def test_bad_prompts_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("0\ta red ball\nsoon\ta blue square\n")
    assert main(["generate", "--prompts", str(prompts), "--out", str(tmp_path / "v.mp4")]) == 2
    assert "prompts.txt:2" in capsys.readouterr().err


def test_entry_point_and_subprocess_error():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(e.name == "reward-forcing" and e.value == "reward_forcing.cli:main" for e in scripts)
    result = subprocess.run(
        [sys.executable, "-m", "reward_forcing.cli", "generate", "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "video.mp4"
    out.write_bytes(b"old")
    frame = np.zeros((9, 32, 48, 3), np.uint8)

    def chunks(error):
        yield frame
        raise error

    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            write_mp4(out, chunks(error), fps=16, width=48, height=32)
        assert out.read_bytes() == b"old" and leftovers(tmp_path, out) == []
    assert write_mp4(out, [frame], fps=16, width=48, height=32) == 9
    assert read_video(out)[2].shape == (9, 32, 48, 3)
