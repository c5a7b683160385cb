"""How fast ``eva02at browse`` answers on the sample's galleries: one query through its API, and one frame strip.

    python -m bench.browse --json browse.json      # after `make demo`: the default panels, 20 EK100 sentences
    python -m bench.browse --panel NAME CHECKPOINT EMBEDDINGS ... --relevancy R.npz --sentences S.csv

The app runs in this process (FastAPI's test client, no socket), with the panels ``eva02at browse`` serves by
default (fine-tuned and zero-shot, each on its own export of the EK100 test clips) or those given. Per query:
the wall time of the whole answer (every panel: text encoding, FAISS search, relevance lookup) and of the first
fetch of each hit's frame strip (decoding the shard's JPEGs, encoding the strip); medians over the queries,
after one warm-up query.
"""

from __future__ import annotations

import argparse
import time

from fastapi.testclient import TestClient

from bench.common import machine_info, median, write_json
from eva02at.evaluation.benchmarks.ek100_mir import read_sentences
from eva02at.search.browse import DEFAULT_PANELS, BenchmarkTruth, Panel, make_app

SENTENCES = "data/benchmarks/ek100_mir/queries.csv"
RELEVANCY = "data/benchmarks/ek100_mir/truth.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20, help="EK100 test sentences asked, from the first")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--panel", nargs=3, action="append", metavar=("NAME", "CHECKPOINT", "EMBEDDINGS"))
    parser.add_argument("--relevancy", default=RELEVANCY, help="relevancy table of the sentences")
    parser.add_argument("--sentences", default=SENTENCES, help="EK100 sentence CSV: the queries asked")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    start = time.perf_counter()
    panels = [Panel(*values) for values in args.panel or DEFAULT_PANELS]
    client = TestClient(make_app(panels, BenchmarkTruth(args.relevancy, args.sentences)))
    load_s = time.perf_counter() - start
    texts = read_sentences(args.sentences)[1][: args.queries + 1]
    answer_s, strip_s = [], []
    for number, text in enumerate(texts):
        start = time.perf_counter()
        answer = client.get("/api/search", params={"q": text, "top": args.top}).json()
        answered = time.perf_counter() - start
        urls = [hit["strip"] for panel in answer["panels"] for hit in panel["hits"]]
        start = time.perf_counter()
        for url in urls:
            client.get(url).raise_for_status()
        if number:  # the first query warms up
            answer_s.append(answered)
            strip_s.append((time.perf_counter() - start) / max(len(urls), 1))
    result = {
        "machine": machine_info(),
        "panels": [p.name for p in panels],
        "clips": [len(side.videos.ids) for side in client.app.state.panels],
        "queries": len(answer_s),
        "top": args.top,
        "load_s": load_s,
        "answer_median_s": median(answer_s),
        "answer_max_s": max(answer_s),
        "strip_median_s": median(strip_s),
    }
    print({key: value for key, value in result.items() if key != "machine"})
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
