"""Put a trained reranker adapter into the package as ``smollm2-reranker`` (rsd_rerank/rerankers/smollm2-reranker).

    .venv/bin/python scripts/ship_reranker.py runs/smollm2-reranker/adapter --step 759

The LoRA weights are stored in float16 (half the bytes; the merge into SmolLM2's fp32 weights is then
a fixed function of the shipped file), the base path peft records is replaced by the target's name,
and ``reranker.json`` records how it was made, the prompt settings it was trained with, and its fp32
greedy ranking of the first example request (the load test checks it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rsd_rerank.files import atomic_write, replace_folder
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import RERANKER_ADAPTER, smollm2_reranker

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "bash scripts/train_reranker.sh"
PROMPT = PromptConfig(max_passage_words=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", type=Path, help="a LoRA adapter folder written by finetune --method reranker")
    p.add_argument("--step", type=int, required=True, help="the training step it was saved at")
    p.add_argument("--run", type=Path, default=Path("runs/smollm2-reranker"), help="the finetune --out folder")
    p.add_argument("--out", type=Path, default=RERANKER_ADAPTER)
    args = p.parse_args(argv)
    fresh = args.out.with_name(f".{args.out.name}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    config = json.loads((args.adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "smollm2 (rsd-rerank's embedded SmolLM2-135M-Instruct)"
    (fresh / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = load_file(str(args.adapter / "adapter_model.safetensors"))
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(fresh / "adapter_model.safetensors")
    )
    target = smollm2_reranker(adapter=fresh)
    example = read_requests(ROOT / "examples" / "requests.jsonl")[0]
    greedy = TargetSession.from_request(target, example, PROMPT).greedy_ranking()
    ranker = args.run / "ranker.json"
    meta = {
        "name": "smollm2-reranker",
        "base": "SmolLM2-135M-Instruct (the embedded target, fp32)",
        "made_by": RECIPE,
        "step": args.step,
        "finetune": json.loads(ranker.read_text()) if ranker.exists() else None,
        "prompt": {"max_passage_words": PROMPT.max_passage_words, "template": PROMPT.template},
        "example_greedy": greedy,
    }
    atomic_write(fresh / "reranker.json", json.dumps(meta, indent=2) + "\n")
    replace_folder(fresh, args.out)
    print(f"shipped {args.adapter} (step {args.step}) to {args.out}; example greedy {greedy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
