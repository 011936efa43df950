"""Preference objectives: DPO (sigmoid, label-smoothed / robust), IPO, SimPO, ORPO and KTO.

Each loss is a function of log-probabilities (summed over the scored tokens of a reply), as
in its paper; the tests hold each one to an implementation written from the paper:

- DPO (Rafailov et al. 2023): ``-log σ(β h)``, ``h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l)
  - log π_ref(y_l))``; ``--label_smoothing ε`` gives conservative DPO (``-(1-ε) log σ(βh) - ε
  log σ(-βh)``), with ``--robust_dpo`` the unbiased robust estimator of Chowdhury et al.
  2024 (``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε)``).
- IPO (Azar et al. 2023): ``(h - 1/(2β))²`` on the summed log-probabilities (β is the
  paper's τ; TRL averages over tokens instead).
- SimPO (Meng et al. 2024): ``-log σ(β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ)``,
  reference-free, length-normalised (``--simpo_gamma`` is γ).
- ORPO (Hong et al. 2024): ``L_SFT + λ L_OR``, ``L_OR = -log σ(log odds(y_w) - log odds(y_l))``,
  ``odds(y) = P/(1-P)`` with ``P`` the per-token mean probability (``exp`` of the mean
  log-probability), ``L_SFT`` the chosen reply's mean token NLL; reference-free (``--orpo_alpha`` is λ).
- KTO (Ethayarajh et al. 2024): ``w_d (1 - σ(β(r - z₀)))`` for a desirable reply,
  ``w_u (1 - σ(β(z₀ - r)))`` for an undesirable one, ``r`` the log-ratio to the reference,
  ``z₀`` the batch's KL estimate (mismatched prompt/reply pairs, clamped at 0, no gradient).

``--init_adapter PATH`` starts the policy from a saved LoRA adapter (an SFT run's) and makes
that adapter, frozen, the reference (the two-stage airoboros recipe: SFT, then DPO).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from airo.core import ConfigError, PreferenceObjective, hookimpl

DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "simpo": 2.0, "orpo": 0.1}


def _opt(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class PreferenceOptions:
    beta: float | None = _opt(None, "Preference objectives' β: the strength of the reference (dpo, ipo's τ, kto; "
                                    "default 0.1) or SimPO's reward scale (default 2.0).", above=0, max=1000)
    label_smoothing: float = _opt(0.0, "DPO: the probability that a pair's preference is flipped (conservative "
                                       "DPO; with --robust_dpo the robust estimator).", min=0, below=0.5)
    robust_dpo: bool = _opt(False, "DPO: the robust (unbiased) loss for noisy preferences instead of conservative "
                                   "label smoothing; needs --label_smoothing above 0.")
    simpo_gamma: float = _opt(1.0, "SimPO: the target reward margin γ.", min=0, max=100)
    orpo_alpha: float = _opt(0.1, "ORPO: the weight λ of the odds-ratio term next to the SFT loss.", min=0, max=100)
    desirable_weight: float = _opt(1.0, "KTO: the weight of desirable replies' losses.", above=0, max=100)
    undesirable_weight: float = _opt(1.0, "KTO: the weight of undesirable replies' losses.", above=0, max=100)
    precompute_ref_log_probs: bool = _opt(False, "Full fine-tunes (dpo, ipo): compute the reference's log-probs in "
                                                 "one pass before training instead of keeping a frozen copy.")
    init_adapter: str | None = _opt(None, "A saved LoRA adapter (an SFT run's output) to start the preference "
                                          "training from; it is also the reference, frozen.", path="dir")

    def validate(self, config) -> None:
        objective = config.run.objective
        if objective not in DEFAULT_BETA:
            for name, value, default in (("init_adapter", self.init_adapter, None), ("beta", self.beta, None)):
                if value != default and name in config.explicit:
                    raise ConfigError(f"--{name} applies to the preference objectives ({', '.join(DEFAULT_BETA)}), "
                                      f"not --objective {objective}")
            return
        if config.data.group_by_length:  # also refused by the objective itself; here before anything is read
            raise ConfigError(f"--group_by_length does not apply to --objective {objective}; leave it out "
                              "(--sample_packing packs pairs instead)")
        if config.data.sample_packing and objective == "kto":
            raise ConfigError("--sample_packing does not apply to --objective kto (it packs preference pairs); "
                              "leave it out")
        if self.robust_dpo and not self.label_smoothing:
            raise ConfigError("--robust_dpo needs --label_smoothing above 0 (the assumed rate of flipped labels)")
        if self.init_adapter and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"--init_adapter {self.init_adapter}: no adapter_config.json there; pass the folder "
                              "an adapter run saved (its --output_dir)")


def beta(config) -> float:
    value = config.get("beta")
    return DEFAULT_BETA[config.run.objective] if value is None else float(value)


# -- the losses, on log-probabilities (tensors of shape (B,)) -------------------------------------

def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float, label_smoothing: float = 0.0,
             robust: bool = False):
    import torch.nn.functional as F

    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    eps = label_smoothing
    if robust:
        return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def ipo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    return (h - 1 / (2 * beta)) ** 2


def simpo_loss(chosen, rejected, chosen_lengths, rejected_lengths, beta: float, gamma: float):
    import torch.nn.functional as F

    return -F.logsigmoid(beta * chosen / chosen_lengths - beta * rejected / rejected_lengths - gamma)


def orpo_loss(chosen, rejected, chosen_lengths, rejected_lengths, alpha: float):
    """(loss, the odds-ratio term, the SFT term) per pair."""
    import torch
    import torch.nn.functional as F

    mean_chosen, mean_rejected = chosen / chosen_lengths, rejected / rejected_lengths
    log_odds = (mean_chosen - mean_rejected) - (torch.log1p(-torch.exp(mean_chosen))
                                                - torch.log1p(-torch.exp(mean_rejected)))
    odds_term = -F.logsigmoid(log_odds)
    sft = -mean_chosen
    return sft + alpha * odds_term, odds_term, sft


def kto_loss(logps, ref_logps, desirable, kl, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """Per-example losses; ``kl`` is z₀ (a number or a 0-d tensor, no gradient)."""
    import torch

    r = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable, good, bad)


def kl_estimate(kl_logps, ref_kl_logps, reduce=None):
    """KTO's z₀: the mean log-ratio of mismatched prompt/reply pairs, over the processes,
    clamped at 0, detached."""
    value = (kl_logps - ref_kl_logps).detach().mean()
    if reduce is not None:
        value = reduce(value)
    return value.clamp(min=0)


# -- the objectives -------------------------------------------------------------------------------

def _pair_metrics(rewards_chosen, rewards_rejected, batch) -> dict:
    return {"rewards/chosen": rewards_chosen, "rewards/rejected": rewards_rejected,
            "rewards/margins": rewards_chosen - rewards_rejected,
            "rewards/accuracies": (rewards_chosen > rewards_rejected).float(),
            "logps/chosen": batch.chosen_logps, "logps/rejected": batch.rejected_logps}


class _Objective(PreferenceObjective):
    def reference(self, config, model):
        path = config.get("init_adapter")
        if path:
            load_init_adapter(model, path)
            return self.frozen_weights(model)
        return super().reference(config, model)


class DPO(_Objective):
    def loss(self, batch, config):
        b = beta(config)
        losses = dpo_loss(batch.chosen_logps, batch.rejected_logps, batch.ref_chosen_logps, batch.ref_rejected_logps,
                          b, config.get("label_smoothing"), config.get("robust_dpo"))
        metrics = _pair_metrics(b * (batch.chosen_logps - batch.ref_chosen_logps).detach(),
                                b * (batch.rejected_logps - batch.ref_rejected_logps).detach(), batch)
        return losses.mean(), metrics


class IPO(DPO):
    def loss(self, batch, config):
        b = beta(config)
        losses = ipo_loss(batch.chosen_logps, batch.rejected_logps, batch.ref_chosen_logps, batch.ref_rejected_logps, b)
        metrics = _pair_metrics(b * (batch.chosen_logps - batch.ref_chosen_logps).detach(),
                                b * (batch.rejected_logps - batch.ref_rejected_logps).detach(), batch)
        return losses.mean(), metrics


class SimPO(_Objective):
    needs_reference = False

    def loss(self, batch, config):
        b = beta(config)
        losses = simpo_loss(batch.chosen_logps, batch.rejected_logps, batch.chosen_lengths, batch.rejected_lengths,
                            b, config.get("simpo_gamma"))
        metrics = _pair_metrics((b * batch.chosen_logps / batch.chosen_lengths).detach(),
                                (b * batch.rejected_logps / batch.rejected_lengths).detach(), batch)
        return losses.mean(), metrics


class ORPO(_Objective):
    needs_reference = False
    metrics = (*PreferenceObjective.metrics, "log_odds_ratio", "nll_loss")

    def loss(self, batch, config):
        alpha = config.get("orpo_alpha")
        losses, odds_term, sft = orpo_loss(batch.chosen_logps, batch.rejected_logps, batch.chosen_lengths,
                                           batch.rejected_lengths, alpha)
        metrics = _pair_metrics((alpha * batch.chosen_logps / batch.chosen_lengths).detach(),
                                (alpha * batch.rejected_logps / batch.rejected_lengths).detach(), batch)
        metrics.update({"log_odds_ratio": -odds_term.detach(), "nll_loss": sft.detach()})
        return losses.mean(), metrics


class KTO(_Objective):
    record_kind = "unpaired"
    metrics = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl")

    def loss(self, batch, config):
        b = beta(config)
        kl = kl_estimate(batch.kl_logps, batch.ref_kl_logps, batch.mean_over_processes)
        losses = kto_loss(batch.logps, batch.ref_logps, batch.desirable, kl, b, config.get("desirable_weight"),
                          config.get("undesirable_weight"))
        rewards = b * (batch.logps - batch.ref_logps).detach()
        good, bad = batch.desirable, ~batch.desirable
        return losses.mean(), {"rewards/chosen": rewards[good], "rewards/rejected": rewards[bad],
                               "logps/chosen": batch.logps[good].detach(), "logps/rejected": batch.logps[bad].detach(),
                               "kl": kl.reshape(1)}


# -- --init_adapter -------------------------------------------------------------------------------

def load_init_adapter(model, path: str) -> None:
    """Load the LoRA adapter saved in ``path`` into ``model``'s own (trainable) adapter. The
    adapter must have the shape of the run's (--lora_r, --lora_modules): each of its tensors
    goes to one trainable tensor of the model and every trainable tensor gets one."""
    from peft import load_peft_weights, set_peft_model_state_dict

    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        raise ConfigError("--init_adapter needs a LoRA run (the qlora loader); a full fine-tune starts from "
                          "--model_name_or_path")
    saved = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    mine = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    theirs = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
              "target_modules": sorted(saved.get("target_modules") or [])}
    differs = [f"{k} {theirs[k]} (this run: {mine[k]})" for k in mine if theirs[k] != mine[k]]
    if differs:
        raise ConfigError(f"--init_adapter {path} was trained with {', '.join(differs)}; pass the same --lora_r, "
                          "--lora_alpha and --lora_modules as its run")
    weights = load_peft_weights(path, device="cpu")
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        raise ConfigError(f"--init_adapter {path} does not fit this model: "
                          + "; ".join(filter(None, [f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:2]}"
                                                    if unexpected else "", f"{len(missing)} missing, e.g. "
                                                    f"{missing[:2]}" if missing else ""])))


@hookimpl
def register_options(register):
    register("preference", PreferenceOptions, description="preference objectives (dpo, ipo, simpo, orpo, kto)")


@hookimpl
def register_objectives(register):
    register("dpo", DPO(), record_kind="preference",
             description="DPO on preference pairs (--beta; --label_smoothing, --robust_dpo for noisy labels)")
    register("ipo", IPO(), record_kind="preference", description="IPO: squared loss to a margin of 1/(2 beta)")
    register("simpo", SimPO(), record_kind="preference",
             description="SimPO: reference-free, length-normalised (--beta, --simpo_gamma)")
    register("orpo", ORPO(), record_kind="preference",
             description="ORPO: SFT on the chosen reply + odds ratio (--orpo_alpha), reference-free")
    register("kto", KTO(), record_kind="unpaired",
             description="KTO on replies labelled desirable or not (--beta, --desirable_weight, --undesirable_weight)")
