"""Which drafter should order the tail rsd-drafts leaves unverified? (issue #32, a probe, not a benchmark.)

Variants of the lead rule of rsd_rerank.decoding.draft_rounds, patched into a copy of the module: "record" (the
rule shipped: most verified slots so far), "agent-on-tie", "agent-always" (the agent leads every round),
"matches" (a drafter scores every slot equal to the target's greedy choice, not only the verified prefix);
beside plain rsd. 20 SciFact test claims (data/scifact/test20.top20.jsonl), bf16, KT to the greedy ranking:

    .venv/bin/python scripts/drafts_lead_probe.py smollm2-reranker 30            # its own agent
    .venv/bin/python scripts/drafts_lead_probe.py smollm2 40 universal
"""

import json
import sys

import rsd_rerank.decoding as dec
from rsd_rerank.difficulty import _kt, method_run
from rsd_rerank.methods import DecodingConfig, decoding_with
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import read_requests
from rsd_rerank.session import TargetSession
from rsd_rerank.targets import load_target

model, words, agent = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else None)
target = load_target(model, dtype="bfloat16")
requests = read_requests("data/scifact/test20.top20.jsonl")[:20]
src = open(dec.__file__).read()
variants = {
    "record": None,
    "agent-on-tie": "lead = max(range(len(drafters)), key=lambda d: (record[d], d == 0))",
    "agent-always": "lead = 0",
    "matches": None,
}
orig = "lead = max(range(len(drafters)), key=lambda d: (record[d], d == lead))"
assert orig in src
fns = {}
for name, line in variants.items():
    code = src if line is None else src.replace(orig, line)
    if name == "matches":
        code = src.replace("record[d] += int(v.accepted[row])", "record[d] += int((sigma[row] == v.greedy[row]).sum())")
        assert code != src
    ns = {}
    exec(compile(code, dec.__file__, "exec"), ns)
    fns[name] = ns["draft_rounds"]
out = {}
cache = {}
for t in (3, 5):
    for name, fn in [("rsd", None), *fns.items()]:
        kts = []
        for r in requests:
            s = TargetSession.from_request(target, r, PromptConfig(max_passage_words=words))
            qid = str(r.query.qid)
            if qid not in cache:
                cache[qid] = method_run(s, DecodingConfig("greedy"))["ranking"]
            greedy = cache[qid]
            if fn is None:
                cfg = decoding_with("rsd", t, agent)
            else:
                dec.draft_rounds = fn
                cfg = decoding_with("rsd-drafts", t, agent)
            kts.append(_kt(method_run(s, cfg)["ranking"], greedy))
        out[f"{name}@{t}"] = sum(kts) / len(kts)
        print(name, t, round(out[f"{name}@{t}"], 3), flush=True)
print(json.dumps(out))
