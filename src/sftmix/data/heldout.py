"""Held-out rows of a source, chosen the same way by training (which excludes them from its
pools and measures them for the forgetting curves) and by evaluation (which scores them).

Held-out rows of a source: its ``test`` split when one exists (GSM8K, generated sources);
otherwise the *last* ``n`` rows of the pool's sampling order under ``heldout_seed`` (0 by
default, whatever the run's seed, so that every run and every replicate of a study is measured on
the same rows and runs can be compared pairwise). Training excludes those rows from its pools
(``sftmix.train.strategies``), and the overlap with the run's manifests is still reported
(``overlap_with_training``) rather than assumed.
"""

from __future__ import annotations

from sftmix.config import SourceConfig
from sftmix.data.compose import sampling_order
from sftmix.data.records import Conversation
from sftmix.data.sources import BUILTINS, load_pool

HAS_TEST_SPLIT = ("gsm8k", "generated_math", "generated_code")


def has_test_split(name: str, cfg: SourceConfig | None) -> bool:
    cfg = cfg or SourceConfig()
    return (cfg.builtin or (name if name in BUILTINS else None)) in HAS_TEST_SPLIT


def heldout(name: str, n: int, seed: int, cfg: SourceConfig | None, data_dir: str | None, pool=None) -> tuple[list[Conversation], str]:
    """``n`` held-out conversations of a source and how they were chosen (``seed``: the held-out
    seed, not the run's). ``pool``: the source's already loaded train pool, if any."""
    cfg = cfg or SourceConfig()
    if has_test_split(name, cfg):
        test = load_pool(name, cfg.model_copy(update={"split": "test", "limit": None}), data_dir)
        return sampling_order(test.conversations, seed)[:n], "test split"
    pool = pool or load_pool(name, cfg, data_dir)
    return sampling_order(pool.conversations, seed)[-n:], "tail of the train pool's sampling order"
