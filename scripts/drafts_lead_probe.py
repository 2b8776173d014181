"""Which drafter should order the tail rsd-drafts leaves unverified? (issue #32, a probe, not a benchmark.)

Variants of the lead rule of rsd_rerank.decoding.draft_rounds, patched into a copy of the module as it was
at commit 9b1bc4d (the record rule):
- "record": the rule shipped until then (most verified slots so far); "agent-on-tie"; "agent-always" (the agent leads
  every round); "matches" (a drafter scores every slot equal to the target's greedy choice, not only the
  verified prefix);
- "retro": every drafter is re-asked what it would have drafted from every earlier round's state, now that
  more of the ranking is verified, and scored by its pair errors against the verified prefix (for each
  verified item, the unplaced items it put ahead); the fewest leads. "last": the same, latest state only;
- "agreement": the agent leads while two drafts' rows at the same slot rank the free items alike (mean Kendall
  tau >= TAU), GSD otherwise: the rule shipped since (rsd_rerank.decoding.row_agreement, POOLING_AGREEMENT).
Beside plain rsd and gsd; bf16, KT to the greedy ranking, mean over the first 20 requests of REQUESTS
(default: the 20 test claims of data/scifact/test20.top20.jsonl):

    .venv/bin/python scripts/drafts_lead_probe.py smollm2-reranker 30            # its own agent
    .venv/bin/python scripts/drafts_lead_probe.py smollm2 40 universal
    # held-out *training* claims (3.5 and 4 minutes on 2 cores):
    .venv/bin/python scripts/drafts_lead_probe.py smollm2 40 universal data/scifact/train-val.top20.jsonl record,retro,last,agreement
    .venv/bin/python scripts/drafts_lead_probe.py smollm2-reranker 30 - data/scifact/train-val.top20.jsonl record,retro,last,agreement
"""

import argparse
import json
import subprocess

import rsd_rerank.decoding as dec
from rsd_rerank.decoding import POOLING_AGREEMENT, row_agreement
from rsd_rerank.difficulty import _kt, method_run
from rsd_rerank.methods import DecodingConfig, decoding_with
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model")
parser.add_argument("words", type=int, help="passages cut to this many words")
parser.add_argument("agent", nargs="?", default="-", help="the agent's name or folder (-: the target's own)")
parser.add_argument("requests", nargs="?", default="data/scifact/test20.top20.jsonl")
parser.add_argument("variants", nargs="?", default="record,agent-on-tie,agent-always,matches")
args = parser.parse_args()
model, words, requests_file = args.model, args.words, args.requests
agent = None if args.agent == "-" else args.agent
chosen = args.variants.split(",")

LEAD = "lead = max(range(len(drafters)), key=lambda d: (record[d], d == lead))"
RECORD = "record[d] += int(v.accepted[row])"
KEPT = "        order = [lead, *(d for d in range(len(drafters)) if d != lead)]\n"
INIT = "    record = [0] * len(drafters)  # verified slots per drafter, summed over rounds\n"


def retro(states: str) -> list[tuple[str, str]]:
    """Lead by pair errors of every drafter's proposal from ``states`` (``past`` or ``past[-1:]``)."""
    judge = (
        "        a_ = int(v.accepted[best])\n"
        "        known_ = sigma[best, :a_].tolist() + [int(v.greedy[best, a_])]\n"
        "        errs_ = [0] * len(drafters)\n"
        f"        for kept_s, state_s in {states}:\n"
        "            for d in range(len(drafters)):\n"
        "                prop = next_ranking(kept_s.rankings, kept_s, drafters[d].scores(state_s))[0].tolist()\n"
        "                errs_[d] += pair_errors(prop, known_)\n"
        "        if past:\n"
        "            lead = min(range(len(drafters)), key=lambda d: (errs_[d], d != lead))\n"
        "        past.append((kept, state))\n"
    )
    return [(INIT, INIT + "    past = []\n"), (LEAD, "pass"), (KEPT, judge + KEPT)]


def pair_errors(prop: list[int], known: list[int]) -> int:
    slot = {x: i for i, x in enumerate(prop)}
    err, placed = 0, set()
    for q in known:
        placed.add(q)
        err += sum(1 for x, s in slot.items() if s < slot[q] and x not in placed)
    return err


AGREE = (
    "        agree_ = row_agreement(sigma, v.matrices)\n"
    "        agreement[0] += agree_[0]\n"
    "        agreement[1] += agree_[1]\n"
)
AGREEMENT = [
    (INIT, INIT + "    agreement = [0.0, 0]\n"),
    ("        best = int(torch.argmax(v.accepted))", AGREE + "        best = int(torch.argmax(v.accepted))"),
    (LEAD, "lead = lead if agreement[1] == 0 else (0 if agreement[0] / agreement[1] >= TAU else 1)"),
]

VARIANTS = {
    "record": [],
    "agent-on-tie": [(LEAD, "lead = max(range(len(drafters)), key=lambda d: (record[d], d == 0))")],
    "agent-always": [(LEAD, "lead = 0")],
    "matches": [(RECORD, "record[d] += int((sigma[row] == v.greedy[row]).sum())")],
    "retro": retro("past"),
    "last": retro("past[-1:]"),
    "agreement": AGREEMENT,
}
TAU = POOLING_AGREEMENT
# The variants patch draft_rounds as it was with the record rule (before the rows decided the lead); run
# from a git checkout. "agreement" there is the rule rsd_rerank.decoding ships now.
RECORD_RULE = "9b1bc4d"
src = subprocess.run(
    ["git", "show", f"{RECORD_RULE}:rsd_rerank/decoding.py"], capture_output=True, text=True, check=True
).stdout
fns = {}
for name in chosen:
    code = src
    for old, new in VARIANTS[name]:
        assert old in code, (name, old)
        code = code.replace(old, new)
    ns = {"pair_errors": pair_errors, "row_agreement": row_agreement, "TAU": TAU}
    exec(compile(code, dec.__file__, "exec"), ns)
    fns[name] = ns["draft_rounds"]

target = load_target(model, dtype="bfloat16")
requests = read_requests(requests_file)[:20]
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
