"""The training mixture: several sources of any format nar reads, drawn by weight, lazily."""

import json

import numpy as np
import pytest

from nar.config import TrainConfig
from nar.data import TextMixture, training_data
from nar.errors import NarError

from .conftest import TINY_CORPUS


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 13 sentences as .jsonl, .parquet, a saved datasets folder, and two .txt files for a glob, each
    marked by its first word so a drawn row tells its source."""
    import datasets

    d = tmp_path_factory.mktemp("mix")

    def texts(mark):
        return [f"{mark} {t}" for t in TINY_CORPUS]

    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts("the")))
    datasets.Dataset.from_dict({"text": texts("a")}).to_parquet(str(d / "b.parquet"))
    datasets.Dataset.from_dict({"text": texts("we")}).save_to_disk(str(d / "c"))
    (d / "d1.txt").write_text("\n".join(texts("she")[:6]) + "\n")
    (d / "d2.txt").write_text("\n".join(texts("she")[6:]) + "\n")
    return d


def test_sources_of_every_kind_are_drawn_by_their_weights(tiny_llm, sources):
    specs = [str(sources / "a.jsonl"), str(sources / "b.parquet"), str(sources / "c"), str(sources / "d*.txt")]
    cfg = TrainConfig(max_tokens=16)
    mix = TextMixture(specs, (1, 2, 3, 4), tiny_llm, cfg)
    assert [s["rows"] for s in mix.stats["sources"]] == [13, 13, 13, 13]  # the glob's two files are one source
    refs = mix.draw(4000, seed=5)
    share = np.bincount([k for k, _ in refs], minlength=4) / len(refs)
    np.testing.assert_allclose(share, [0.1, 0.2, 0.3, 0.4], atol=0.03)
    pairs = mix.pairs(refs[:200])
    first = {"the": 0, "a": 1, "we": 2, "she": 3}
    assert all(first[s.split()[0]] == k for s, (k, _) in zip(pairs.sources, refs[:200]))
    assert pairs.sources == pairs.targets and all(tiny_llm.encode(t) == x for t, x in zip(pairs.targets,
                                                                                        pairs.token_ids))
    assert mix.draw(4000, seed=5) == refs and mix.draw(4000, seed=6) != refs  # a function of the seed alone
    short = mix.pairs(mix.draw(500, seed=1, cap=6)).targets  # the curriculum's cap: only targets of <= 6 tokens
    assert all(len(tiny_llm.encode(t)) <= 6 for t in short)
    assert any(len(tiny_llm.encode(t)) > 6 for t in pairs.targets)  # which the uncapped draws do hold


def test_held_out_rows_are_never_drawn_and_targets_too_long_are_skipped(tiny_llm, sources):
    cfg = TrainConfig(data=(str(sources / "a.jsonl"), str(sources / "b.parquet")), max_tokens=7)
    train, held = training_data(cfg, tiny_llm)
    assert len(held) == 1 and train.stats["held_out"] == 1  # 10% of the first source's usable rows, at least one
    drawn = set(train.pairs(train.draw(3000, seed=0)).sources)
    assert held.sources[0] not in drawn
    long = [t for t in (f"the {x}" for x in TINY_CORPUS) if len(tiny_llm.encode(t)) > 7]
    assert long and not drawn & set(long) and train.stats["kept"] == 26 - 1 - 2 * len(long)
    with pytest.raises(NarError, match="one weight per data source"):
        TextMixture(cfg.data, (1.0,), tiny_llm, cfg)
    with pytest.raises(NarError, match="matches no file"):
        TextMixture((str(sources / "nothing*.txt"),), (), tiny_llm, cfg)
    with pytest.raises(NarError, match="no column 'prompt'"):
        TextMixture(cfg.data, (), tiny_llm, cfg.replace(source_column="prompt"))
