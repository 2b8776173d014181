"""The probes that chose recipe C (issue #30): can SmolLM2-135M learn to put a claim's own top BM25
passage first among 4 passages of other claims (lists of 5, first slot only, 8 lists an AdamW step)?

Accuracy on the 50 held-out training claims (chance 0.2), 10-word passages, LoRA r 32, lr 5e-4
(results in benchmarks/results/reranker-recipes/README.md):

    .venv/bin/python scripts/reranker_probe.py --steps 50 --out runs/probe/coarse.jsonl             # stays at chance
    .venv/bin/python scripts/reranker_probe.py --steps 50 --verbatim --out runs/probe/verbatim.jsonl
    # the own passage starts with the claim: 1.0 by step 50, abruptly after step 25
    .venv/bin/python scripts/reranker_probe.py --steps 150 --verbatim-steps 40 --eval-every 10 \
        --out runs/probe/curriculum.jsonl                                # 40 cued steps, then the coarse task
    # the same held-out check of finetune snapshots (LoRA folders), one JSON line each:
    .venv/bin/python scripts/reranker_probe.py --adapters runs/smollm2-reranker/snapshots/step-800 ...

A research probe, not the recipe: ``scripts/train_reranker.sh`` is.
"""

import argparse
import copy
import dataclasses
import json
import random
import time

import torch
from peft import LoraConfig, get_peft_model

from rsd_rerank.prompt import PromptConfig, request_prompt
from rsd_rerank.runs import read_requests  # noqa: I001
from rsd_rerank.targets import load_target

ap = argparse.ArgumentParser()
ap.add_argument("--k", type=int, default=5)
ap.add_argument("--words", type=int, default=30)
ap.add_argument("--lr", type=float, default=5e-4)
ap.add_argument("--accum", type=int, default=8)
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--full", action="store_true")
ap.add_argument("--rank", type=int, default=16)
ap.add_argument("--verbatim", action="store_true")
ap.add_argument("--verbatim-steps", type=int, default=0)
ap.add_argument("--eval-every", type=int, default=25)
ap.add_argument("--save", default="")
ap.add_argument("--label-after", action="store_true")
ap.add_argument("--out", default="/tmp/probe/out.jsonl")
ap.add_argument("--adapters", nargs="*", default=[], help="only evaluate these LoRA folders (bf16) and stop")
a = ap.parse_args()
torch.manual_seed(0)
t = load_target("smollm2")
tok = t.tokenizer
fit = read_requests("data/scifact/train-fit.top20.jsonl")
val = read_requests("data/scifact/train-val.top20.jsonl")
pc = PromptConfig(max_passage_words=a.words)


def make(reqs, i, rng, verbatim=None):
    r = reqs[i]
    own = r.candidates[0]
    if a.verbatim if verbatim is None else verbatim:
        own = dataclasses.replace(own, doc={"contents": r.query.text + " " + own.doc["contents"]})
    foreign = []
    while len(foreign) < a.k - 1:
        j = rng.randrange(len(reqs))
        if j != i:
            foreign.append(rng.choice(reqs[j].candidates))
    cands = [own] + foreign
    order = list(range(a.k))
    rng.shuffle(order)
    cands = [cands[o] for o in order]
    if a.label_after:
        cands = [
            dataclasses.replace(
                c,
                doc={
                    "contents": " ".join(c.doc["contents"].split()[: a.words - 2])
                    + " ["
                    + "ABCDEFGHIJKLMNOPQRST"[n]
                    + "]"
                },
            )
            for n, c in enumerate(cands)
        ]
    p = request_prompt(tok, dataclasses.replace(r, candidates=cands), pc, None)
    return p, order.index(0)


if a.adapters:
    from rsd_rerank.targets import smollm2_reranker

    for adapter in a.adapters:
        merged = smollm2_reranker(dtype="bfloat16", adapter=adapter)
        vrng = random.Random(123)
        vset = [make(val, i, vrng, verbatim=False) for i in range(len(val))]
        hits = nll = 0.0
        with torch.no_grad():
            for p, gold in vset:
                logits = merged.model(input_ids=torch.tensor([list(p.token_ids)]), logits_to_keep=1).logits[0, -1]
                s = logits.float()[list(p.layout.first_ids)]
                hits += int(s.argmax() == gold)
                nll += float(-torch.log_softmax(s, -1)[gold])
        print(json.dumps({"adapter": adapter, "words": a.words, "acc": hits / len(vset), "nll": nll / len(vset)}))
    raise SystemExit(0)

model = copy.deepcopy(t.model).float().train()
if not a.full:
    model = get_peft_model(
        model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules="all-linear", lora_dropout=0.0)
    )
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
vrng = random.Random(123)
vset = [make(val, i, vrng, verbatim=False) for i in range(len(val))]


def evaluate():
    model.eval()
    hits = 0
    nll = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for p, gold in vset:
            logits = model(input_ids=torch.tensor([list(p.token_ids)]), logits_to_keep=1).logits[0, -1].float()
            s = logits[list(p.layout.first_ids)]
            hits += int(s.argmax() == gold)
            nll += float(-torch.log_softmax(s, -1)[gold])
    model.train()
    return hits / len(vset), nll / len(vset)


rng = random.Random(0)
log = open(a.out, "w")
acc, nll = evaluate()
print(json.dumps({"step": 0, "acc": acc, "nll": nll}), flush=True)
log.write(json.dumps({"step": 0, "acc": acc, "nll": nll}) + "\n")
t0 = time.time()
run = 0.0


def batch_loss(items):
    n = max(len(p.token_ids) for p, _ in items)
    ids = torch.zeros(len(items), n, dtype=torch.long)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    for b, (p, _) in enumerate(items):
        ids[b, : len(p.token_ids)] = torch.tensor(list(p.token_ids))
        mask[b, : len(p.token_ids)] = 1
    base = model.get_base_model() if not a.full else model
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(len(items)), mask.sum(1) - 1]
        logits = base.lm_head(last).float()
    total = 0
    for b, (p, gold) in enumerate(items):
        total = total - torch.log_softmax(logits[b, list(p.layout.first_ids)], -1)[gold]
    return total / len(items)


for step in range(1, a.steps + 1):
    opt.zero_grad()
    items = [
        make(fit, rng.randrange(len(fit)), rng, verbatim=a.verbatim or step <= a.verbatim_steps) for _ in range(a.accum)
    ]
    loss = batch_loss(items)
    loss.backward()
    run = 0.98 * run + 0.02 * float(loss)
    opt.step()
    if step % a.eval_every == 0:
        acc, nll = evaluate()
        row = {"step": step, "acc": acc, "nll": nll, "train": run / (1 - 0.98**step), "s": round(time.time() - t0)}
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()

if a.save:
    model.save_pretrained(a.save)
