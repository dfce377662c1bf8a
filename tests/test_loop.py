"""collapse_sim/loop.py: blocks, chunks stopped where they stand, and restoring them in another chunking."""

from __future__ import annotations

import pandas as pd

from collapse_sim import loop
from collapse_sim import plan as planmod
from tests.helpers import load


def test_stop_mid_block_with_several_chunks_resumes_exactly():
    """Chunks of one group stopped at different generations are saved as they
    are, re-chunked on restore, and finish bit-identical."""
    cfg = load(
        [
            "source.kind=markov",
            "source.vocab_size=5",
            "source.order=1",
            "model.order=2",
            "model.smoothing=0.01",
            "real.sequences=40",
            "real.seq_len=8",
            "real.heldout=30",
            "generate.sequences=30",
            "corpus.policy=accumulate_subsample",
            "corpus.train_sequences=20",
            "replicates=10",
            "generations=7",
            "checkpoint.every=4",
        ]
    )

    def plan():
        p = planmod.make_plan(cfg, "test")
        p.groups[0].chunk_size = 2  # 4 cells per batch on 2 devices: 3 chunks
        return p

    rows = []
    loop.run_plan(plan(), rows.append)
    full = pd.concat(map(pd.DataFrame, rows)).sort_values(["cell", "generation"]).reset_index(drop=True)

    first, saved, emits = [], {}, [0]

    def emit(cols):
        first.append(cols)
        emits[0] += 1

    def save(chunks, reason):
        saved["groups"], saved["reason"] = loop.snapshot(p1, chunks), reason

    p1 = plan()
    done = loop.run_plan(p1, emit, save=save, should_stop=lambda: emits[0] >= 20)
    assert not done and saved["reason"] == "stopped"
    gens = saved["groups"][0]["generation"]
    assert len(set(gens.tolist())) > 1, gens  # the chunks are at different generations
    p2 = plan()
    p2.groups[0].chunk_size = 6  # another chunking on resume
    chunks = loop.restored_chunks(p2, saved["groups"], 2)
    rest = []
    assert loop.run_plan(p2, rest.append, chunks=chunks)
    got = pd.concat(map(pd.DataFrame, first + rest)).sort_values(["cell", "generation"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, full)
