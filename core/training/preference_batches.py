"""Preference examples -> padded batches (pairs: the chosen rows, then the rejected; unpaired:
the rows, then KTO's KL rows). Used by the preference Trainer and by pair packing."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

IGNORE_INDEX = -100


def _pad(rows: list[list[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class PreferenceCollator:
    """Pairs -> one right-padded batch: the chosen rows (prompt + chosen), then the rejected
    rows; labels -100 on the prompt and the padding. Unpaired examples -> their rows, then
    the KL rows (each prompt with the next example's reply), and ``desirable``."""

    def __init__(self, pad_token_id: int | None):
        if pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token; pass --pad_token")
        self.pad_token_id = int(pad_token_id)

    def _batch(self, prompts, replies, labels) -> dict[str, Any]:
        ids = [p + r for p, r in zip(prompts, replies)]
        labs = [[IGNORE_INDEX] * len(p) + list(lab) for p, lab in zip(prompts, labels)]
        input_ids = _pad(ids, self.pad_token_id)
        mask = _pad([[1] * len(r) for r in ids], 0)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": _pad(labs, IGNORE_INDEX)}

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        prompts = [list(f["prompt_input_ids"]) for f in features]
        if "chosen_input_ids" in features[0]:
            replies = [list(f[f"{side}_input_ids"]) for side in ("chosen", "rejected") for f in features]
            labels = [list(f[f"{side}_labels"]) for side in ("chosen", "rejected") for f in features]
            batch = self._batch(prompts + prompts, replies, labels)
            if "ref_chosen_logps" in features[0]:  # --precompute_ref_log_probs
                for side in ("chosen", "rejected"):
                    batch[f"ref_{side}_logps"] = torch.tensor([float(f[f"ref_{side}_logps"]) for f in features])
            return batch
        replies = [list(f["completion_input_ids"]) for f in features]
        labels = [list(f["completion_labels"]) for f in features]
        shift = [(i + 1) % len(features) for i in range(len(features))]
        batch = self._batch(prompts + prompts, replies + [replies[j] for j in shift],
                            labels + [labels[j] for j in shift])
        batch["desirable"] = torch.tensor([bool(f["desirable"]) for f in features])
        return batch
