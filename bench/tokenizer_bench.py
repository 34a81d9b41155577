"""The BPE tokenizer beside its peers, measured side by side in one run on one machine.

    flock -x /tmp/mini_llm_cpu.lock python bench/tokenizer_bench.py [--data-dir DIR] [--repeats 5]

  training  a 10k vocabulary (<|endoftext|> special) on tinystories_2MiB.txt: ours (C++ core,
            counting in one thread per core) against Hugging Face `tokenizers`' BpeTrainer with
            GPT-2's byte-level pre-tokenizer, run as it runs by default (one rayon thread per
            core); the pure-Python reference is timed once, for scale. Target: ours <= 1.5x HF.
  encoding  GPT-2's vocabulary on tinyshakespeare.txt and tinystories_2MiB.txt, one thread:
            ours against tiktoken's GPT-2 encoding built from the same two files, in MB of UTF-8
            per second. Ours is timed "cold": a freshly loaded tokenizer with an empty cache,
            the first encode of the text (its later encodes, with the cache full, are faster).
            Target: ours >= 0.5x tiktoken, against tiktoken's faster mode.

Each figure is the median of --repeats runs, ours and the peer alternating. DIR holds the data
files (default: $MINI_LLM_DATA_DIR, else ../shared/data beside the project). Needs the `bench`
extra: pip install -e '.[bench]'. Writes tokenizer_cpu.{json,md}
into --out (bench/script.py).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import regex
import tiktoken
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mini_llm.bench import script
from mini_llm.tokenizer import Tokenizer, backends, train_bpe_file
from mini_llm.tokenizer.gpt2_format import token_bytes
from mini_llm.tokenizer.pretokenize import GPT2_PATTERN

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 10_000
SPECIALS = ["<|endoftext|>"]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def train_ours(path, backend="cpp"):
    backends._cpp.cache_clear()  # rebuild the character table each run: its cost is counted
    return train_bpe_file(path, VOCAB, SPECIALS, backend=backend)


def train_hf(path):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(path)], trainer)
    return tok


def bench_training(data, repeats):
    path = data / "tinystories_2MiB.txt"
    ours, hf = [], []
    for _ in range(repeats):
        seconds, tok = timed(lambda: train_ours(path))
        ours.append(seconds)
        seconds, hf_tok = timed(lambda: train_hf(path))
        hf.append(seconds)
    python_s, _ = timed(lambda: train_ours(path, "python"))
    ratio = statistics.median(ours) / statistics.median(hf)
    return {
        "file": path.name, "vocab_size": VOCAB, "special_tokens": SPECIALS,
        "ours_s": ours, "hf_s": hf, "ours_python_backend_s": python_s,
        "ours_vocab_size": tok.vocab_size, "hf_vocab_size": hf_tok.get_vocab_size(),
        "ours_threads": os.cpu_count(),
        "hf_threads": f"rayon default (RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}, "
                      f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}, "
                      f"{os.cpu_count()} cores)",
        "ratio_ours_over_hf": ratio, "target": "<= 1.5", "met": ratio <= 1.5,
    }


def tiktoken_gpt2(data):
    encoder = json.loads((data / "gpt2_encoder.json").read_text())
    ranks = {token_bytes(text): i for text, i in encoder.items() if text != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": encoder["<|endoftext|>"]})


def bench_encoding(data, repeats):
    os.environ["MINI_LLM_DATA_DIR"] = str(data)  # Tokenizer.load("gpt2") reads the files there
    peer = tiktoken_gpt2(data)
    rows = []
    for name in ("tinyshakespeare.txt", "tinystories_2MiB.txt"):
        text = (data / name).read_text(encoding="utf-8")
        mb = len(text.encode("utf-8")) / 1e6
        cold, warm, ordinary, with_specials = [], [], [], []
        for _ in range(repeats):
            ours = Tokenizer.load("gpt2")  # a fresh, empty cache
            seconds, ids = timed(lambda: ours.encode(text))
            cold.append(mb / seconds)
            warm.append(mb / timed(lambda: ours.encode(text))[0])
            ordinary.append(mb / timed(lambda: peer.encode_ordinary(text))[0])
            seconds, expected = timed(lambda: peer.encode(text, allowed_special="all"))
            with_specials.append(mb / seconds)
            assert ids == expected, f"ours and tiktoken disagree on {name}"
        best_peer = max(statistics.median(ordinary), statistics.median(with_specials))
        rows.append({
            "file": name, "megabytes": mb, "tokens": len(ids), "backend": ours.backend.name,
            "ours_cold_mb_s": cold, "ours_warm_mb_s": warm,
            "tiktoken_encode_ordinary_mb_s": ordinary,
            "tiktoken_encode_allowed_special_all_mb_s": with_specials,
            "ratio_ours_cold_over_tiktoken": statistics.median(cold) / best_peer,
        })
    ratio = min(r["ratio_ours_cold_over_tiktoken"] for r in rows)
    return {"files": rows, "threads": "1 (ours and tiktoken both encode one string on one thread)",
            "ratio_ours_over_tiktoken": ratio, "target": ">= 0.5", "met": ratio >= 0.5}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "mini_llm/tokenizer", "csrc/tokenizer"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__,
            "regex": regex.__version__, "git_commit": git.stdout.strip() + ("+dirty" if dirty else ""),
            "date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv)}


def markdown(result):
    t, e, m = result["training"], result["encoding"], result["machine"]
    med = statistics.median
    lines = [
        "| measurement | ours | peer | ours / peer | target |", "| --- | --- | --- | --- | --- |",
        f"| train {t['vocab_size']:,} tokens on {t['file']} (s, lower is better) | {med(t['ours_s']):.3f} "
        f"(C++ core; pure Python {t['ours_python_backend_s']:.2f}) | {med(t['hf_s']):.3f} (HF tokenizers) | "
        f"**{t['ratio_ours_over_hf']:.2f}x** | <= 1.5x: {'met' if t['met'] else 'NOT met'} |",
    ]
    for r in e["files"]:
        lines.append(
            f"| encode {r['file']} with GPT-2 (MB/s, higher is better) | {med(r['ours_cold_mb_s']):.1f} cold, "
            f"{med(r['ours_warm_mb_s']):.1f} warm | {med(r['tiktoken_encode_ordinary_mb_s']):.1f} "
            f"(tiktoken encode_ordinary), {med(r['tiktoken_encode_allowed_special_all_mb_s']):.1f} "
            f"(encode, specials) | **{r['ratio_ours_cold_over_tiktoken']:.2f}x** | >= 0.5x: "
            f"{'met' if r['ratio_ours_cold_over_tiktoken'] >= 0.5 else 'NOT met'} |")
    lines += [
        "",
        f"Threads: training, ours {t['ours_threads']} counting threads, HF {t['hf_threads']}; "
        f"encoding, {e['threads']}. Medians of {result['repeats']} runs, alternating. Cold: a "
        "fresh tokenizer's first encode of the text; the encode ratio uses cold against tiktoken's "
        "faster mode.",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, tiktoken {m['tiktoken']}, tokenizers "
        f"{m['tokenizers']}, regex {m['regex']}, commit {m['git_commit']}, {m['date']}: `{m['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("MINI_LLM_DATA_DIR") or ROOT.parent / "shared" / "data"
    parser.add_argument("--data-dir", type=Path, default=Path(default))
    parser.add_argument("--repeats", type=int, default=5)
    script.add_out_flag(parser)
    args = parser.parse_args(argv)
    out = script.check_out(args.out)
    if backends._bpe_core is None:
        sys.exit("the C++ core is not built: pip install -e . (with a C++ compiler)")
    result = {"benchmark": "BPE tokenizer: training vs HF tokenizers, encoding vs tiktoken",
              "repeats": args.repeats, "machine": machine(),
              "training": bench_training(args.data_dir, args.repeats),
              "encoding": bench_encoding(args.data_dir, args.repeats)}
    script.write_results(out, {"tokenizer_cpu.json": json.dumps(result, indent=2) + "\n",
                               "tokenizer_cpu.md": markdown(result)})
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(script.run(main))
