"""The held-out loss task: mean assistant-token loss per source on its held-out rows
(``sftmix.data.heldout``), measured with training's own loss (``sftmix.supervised``)."""

from __future__ import annotations

from sftmix.config import EvalConfig, HeldoutConfig
from sftmix.data.heldout import HeldoutRows, choose
from sftmix.models import load_model, load_tokenizer


def heldout_loss(model_path, cfg: EvalConfig, hcfg: HeldoutConfig, template, data_dir, sources, seed, training_ids, loaded=None,
                 held: HeldoutRows | None = None):
    """Held-out loss per source, on ``held`` (the run's rows, as its training chose them) or, for
    a checkpoint evaluated on its own, on rows chosen now by the same rule. A checkpoint whose
    training already measured exactly these rows the same way at its last step
    (``heldout_loss.json``, written by the forgetting curve) is not measured again: the numbers are
    the same by construction (tested)."""
    from sftmix.supervised import heldout_key, mean_loss, read_saved_heldout  # torch: loaded when a loss is measured

    if held is None:
        held = choose(hcfg.sources, hcfg.samples, hcfg.seed, sources, str(data_dir) if data_dir else None)
    sets = {name: held.rows(name) for name in hcfg.sources}  # a source that could not be loaded: its error
    hows = {name: held.how[name] for name in hcfg.sources}
    saved = read_saved_heldout(model_path)
    measured = saved.results if saved and saved.key == heldout_key(sets, template, hcfg.max_length, cfg.batch_size) else {}
    model = tok = None
    metrics, rows = {}, []
    for name, convs in sets.items():
        how = hows[name]
        if name in measured:
            got = measured[name]
        else:
            if model is None:
                tok, model = loaded or (load_tokenizer(model_path), load_model(model_path))
            got = mean_loss(model, tok, convs, template, hcfg.max_length, cfg.batch_size)
        per_sample = got.per_sample
        m = {**got.model_dump(exclude={"per_sample"}), "heldout": how}
        if training_ids is not None:
            m["overlap_with_training"] = sum(c.id in training_ids for c in convs)
        metrics[name] = m
        rows += [{"source": name, "id": i, "loss_sum": s, "tokens": k} for i, s, k in per_sample]
    return metrics, rows
