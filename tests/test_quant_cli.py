"""`mini-llm quantize` and `mini-llm sample --quant`: a quantized checkpoint samples the same
tokens as quantizing on load, the tokens/s line names the weights, and bad flags are one line."""

import pytest

from mini_llm.cli import main


@pytest.fixture
def run(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                 "--max-iters", "2", "--sample-tokens", "0"]) == 0
    return out


def sample(capsys, *argv):
    assert main(["sample", *map(str, argv), "--prompt", "All:", "-n", "12", "--temperature", "0"]) == 0
    return capsys.readouterr()


def test_quantized_checkpoint_samples_what_quantizing_on_load_samples(run, tmp_path, capsys):
    capsys.readouterr()
    on_load = sample(capsys, run, "--quant", "int4", "--group-size", "32")
    path = tmp_path / "run.int4.safetensors"
    assert main(["quantize", str(run), "--quant", "int4", "--group-size", "32", "--out", str(path)]) == 0
    assert "int4" in capsys.readouterr().out and path.is_file()
    from_file = sample(capsys, path)
    assert from_file.out == on_load.out and from_file.out.startswith("All:")
    assert "int4 weights" in from_file.err and "int4 weights" in on_load.err


@pytest.mark.parametrize("argv,message", [
    (["sample", "{run}", "--quant", "int8", "--group-size", "32"], "--group-size is for --quant int4"),
    (["quantize", "{run}", "--quant", "int4", "--group-size", "64", "--out", "{tmp}/q"], "does not divide K = 32"),
    (["sample", "{quantized}", "--quant", "int8"], "is already quantized; drop --quant"),
])
def test_bad_quantization_flags_are_one_line(argv, message, run, tmp_path, capsys):
    quantized = tmp_path / "q8.safetensors"
    assert main(["quantize", str(run), "--quant", "int8", "--out", str(quantized)]) == 0
    capsys.readouterr()
    argv = [a.format(run=run, tmp=tmp_path, quantized=quantized) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
