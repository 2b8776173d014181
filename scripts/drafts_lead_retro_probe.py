"""Which drafter should order the tail rsd-drafts leaves unverified? Two more lead rules, on held-out
*training* claims (issue #32; a probe, not a benchmark; scripts/drafts_lead_probe.py tried others on test claims).

"record" is the rule shipped (rsd_rerank.decoding.draft_rounds: most verified slots so far). "retro" re-asks
every drafter what it would have drafted from every earlier round's state, now that more of the ranking is
verified, and counts its pair errors against the verified prefix (for each verified item, the unplaced items
it put ahead); the fewest leads. "last" counts them for the latest state only. Beside GSD and plain RSD;
bf16, KT to the target's greedy ranking, mean over the first N requests:

    .venv/bin/python scripts/drafts_lead_retro_probe.py smollm2 40 universal data/scifact/train-val.top20.jsonl 20
    .venv/bin/python scripts/drafts_lead_retro_probe.py smollm2-reranker 30 - data/scifact/train-val.top20.jsonl 20

(8 and 9 minutes on 2 cores; results in benchmarks/results/drafts-lead/val-*.json.)
"""

import json
import sys

import torch

import rsd_rerank.decoding as dec
from rsd_rerank.decoding import Round, Step, Verification, initial_ranking, next_ranking
from rsd_rerank.difficulty import _kt, method_run
from rsd_rerank.methods import DecodingConfig, decoding_with
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target


def pair_errors(prop, known):
    slot = {x: i for i, x in enumerate(prop)}
    err, before = 0, set()
    for q in known:
        before.add(q)
        err += sum(1 for x, s in slot.items() if s < slot[q] and x not in before)
    return err


def make(mode):
    def draft_rounds(first_slot, k, drafters, budget):
        sigma = initial_ranking(first_slot)[None]
        owners = [list(range(len(drafters)))]
        lead = 0
        past = []
        accepted_rounds, rankings, matrices, accepted, steps = [], [], [], [], []
        for _ in range(budget):
            v = yield sigma
            best = int(torch.argmax(v.accepted))
            accepted_rounds.append([int(v.accepted[best])])
            if int(v.accepted[best]) >= k:
                sigma = sigma[best : best + 1]
                break
            for d in [*(d for d in range(sigma.shape[0]) if d != best), best]:
                rankings.append(sigma[d : d + 1])
                matrices.append(v.matrices[d : d + 1])
                accepted.append(v.accepted[d : d + 1])
            state = Round(torch.stack(rankings, 1), torch.stack(matrices, 1), torch.stack(accepted, 1))
            kept = Verification(
                sigma[best : best + 1],
                v.matrices[best : best + 1],
                v.greedy[best : best + 1],
                v.accepted[best : best + 1],
            )
            a = int(v.accepted[best])
            known = sigma[best, :a].tolist() + [int(v.greedy[best, a])]
            errs = [0] * len(drafters)
            for kept_s, state_s in past if mode == "retro" else past[-1:]:
                for d in range(len(drafters)):
                    prop = next_ranking(kept_s.rankings, kept_s, drafters[d].scores(state_s))[0].tolist()
                    errs[d] += pair_errors(prop, known)
            if past:
                lead = min(range(len(drafters)), key=lambda d: (errs[d], d != lead))
            past.append((kept, state))
            order = [lead, *(d for d in range(len(drafters)) if d != lead)]
            drafts = torch.cat([next_ranking(kept.rankings, kept, drafters[d].scores(state)) for d in order])
            rows = {}
            owners, keep = [], []
            for i, row in enumerate(drafts.tolist()):
                if tuple(row) not in rows:
                    rows[tuple(row)] = len(keep)
                    keep.append(i)
                    owners.append([])
                owners[rows[tuple(row)]].append(order[i])
            sigma = drafts[keep]
            steps.append(Step(state, sigma[:1]))
        return sigma[:1], accepted_rounds, steps

    return draft_rounds


model, words, agent, reqfile = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if sys.argv[3] != "-" else None), sys.argv[4]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 20
target = load_target(model, dtype="bfloat16")
requests = read_requests(reqfile)[:n]
orig = dec.draft_rounds
fns = {"record": orig, "retro": make("retro"), "last": make("last")}
out, cache = {}, {}
for t in (3, 5):
    for name, fn in [("gsd", None), ("rsd", None), *fns.items()]:
        kts = []
        for r in requests:
            s = TargetSession.from_request(target, r, PromptConfig(max_passage_words=words))
            qid = str(r.query.qid)
            if qid not in cache:
                cache[qid] = method_run(s, DecodingConfig("greedy"))["ranking"]
            if fn is None:
                cfg = decoding_with(name, t, agent if name == "rsd" else None)
            else:
                dec.draft_rounds = fn
                cfg = decoding_with("rsd-drafts", t, agent)
            kts.append(_kt(method_run(s, cfg)["ranking"], cache[qid]))
        out[f"{name}@{t}"] = sum(kts) / len(kts)
        print(name, t, round(out[f"{name}@{t}"], 3), flush=True)
print(json.dumps(out))
