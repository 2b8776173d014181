"""Writes examples/requests.jsonl: two queries with 20 hand-written candidate passages each (RankLLM format).

The passages were written for this project (no dataset, no hub); run `python examples/make_requests.py`
to regenerate the file after editing them.
"""

import json
from pathlib import Path

QUERIES = {
    "tides": (
        "what causes ocean tides",
        [
            "Tides are the regular rise and fall of sea level caused mainly by the gravitational pull of the Moon on the rotating Earth.",
            "The Sun also raises tides, about half as strong as the Moon's; when both align at new and full moon, spring tides are highest.",
            "Neap tides occur at the first and third quarter moon, when the Sun and Moon pull at right angles and partly cancel.",
            "A tide gauge records water height every few minutes so that harbour masters can publish tide tables for ships.",
            "Two bulges form because the Moon pulls the near ocean more strongly than the Earth's centre, and the centre more than the far ocean.",
            "Coastal shape and basin resonance amplify tides: the Bay of Fundy reaches a range of sixteen metres.",
            "Surfers prefer an incoming tide on many reef breaks because deeper water makes waves break more cleanly.",
            "Tidal friction slowly lengthens the day and pushes the Moon about four centimetres farther away each year.",
            "Storm surge is a rise of water driven by wind and low air pressure, and can add to a high tide during hurricanes.",
            "Tidal power stations place turbines in estuaries to generate electricity from the flow of water.",
            "The Mediterranean Sea has very small tides because its narrow link to the Atlantic limits the water that can flow in.",
            "Isaac Newton first explained tides with his law of universal gravitation in the Principia of 1687.",
            "Red tides are blooms of algae that colour the water and can poison shellfish; they have nothing to do with the Moon.",
            "Most coasts see two high and two low tides each lunar day of about twenty four hours and fifty minutes.",
            "Sea level rise from melting ice sheets is measured in millimetres per year by satellites and tide gauges.",
            "Rip currents are narrow seaward flows that can carry swimmers away from the beach.",
            "Lakes have tiny tides of a few centimetres because the body of water is too small for a large bulge.",
            "Tide pools hold anemones, crabs and snails that survive exposure at low tide.",
            "The Earth's crust itself rises and falls by about thirty centimetres twice a day in solid Earth tides.",
            "Lighthouses guided ships along dangerous coasts before satellite navigation became common.",
        ],
    ),
    "vitd": (
        "does vitamin D supplementation prevent bone fractures in older adults",
        [
            "A meta-analysis of randomized trials found that vitamin D alone did not reduce hip fractures in community-dwelling older adults.",
            "Combined calcium and vitamin D supplementation modestly reduced hip fractures among nursing home residents in a French trial.",
            "Vitamin D is synthesized in the skin when ultraviolet B light converts 7-dehydrocholesterol to previtamin D3.",
            "Annual high-dose oral vitamin D increased falls and fractures in elderly women in an Australian trial.",
            "Bone mineral density is measured with dual-energy X-ray absorptiometry at the hip and spine.",
            "Falls cause most hip fractures in people over seventy, so balance training is a key prevention strategy.",
            "The VITAL trial reported no effect of daily vitamin D3 on total, nonvertebral or hip fractures in generally healthy adults.",
            "Vitamin D deficiency in children causes rickets, with soft bones and bowed legs.",
            "Bisphosphonates such as alendronate lower vertebral fracture risk in women with osteoporosis.",
            "Serum 25-hydroxyvitamin D is the standard marker of vitamin D status in clinical studies.",
            "Observational cohorts link low vitamin D levels with higher fracture risk, but confounding by frailty is likely.",
            "Fatty fish, egg yolks and fortified milk are dietary sources of vitamin D.",
            "Hip protectors reduced fractures only when residents actually wore them in nursing home studies.",
            "Vitamin K antagonists such as warfarin may affect bone metabolism through osteocalcin.",
            "Guidelines recommend vitamin D supplements for older adults who are deficient or at high risk of falls.",
            "Exercise programmes that combine strength and balance reduce the rate of falls in older people by about a quarter.",
            "Calcium supplements alone have been associated with kidney stones and constipation.",
            "Sunlight exposure in winter at high latitudes is too weak to produce much vitamin D.",
            "Vitamin D receptors are present in muscle, which may explain effects on strength and falls.",
            "Dental caries are reduced by fluoride toothpaste and water fluoridation.",
        ],
    ),
}


def main() -> None:
    out = Path(__file__).with_name("requests.jsonl")
    with open(out, "w") as f:
        for qid, (query, passages) in QUERIES.items():
            candidates = [
                {"docid": f"{qid}-{i:02d}", "score": float(len(passages) - i), "doc": {"text": text}}
                for i, text in enumerate(passages)
            ]
            f.write(json.dumps({"query": {"text": query, "qid": qid}, "candidates": candidates}) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
