"""Causal LM cross-entropy without the full-vocabulary logits.

The plain loss materialises ``tokens x vocab`` logits, upcasts them to fp32, and keeps a
gradient of the same size: at 2,048 tokens and a 128k vocabulary that is 1 GB per copy,
more than the rest of a LoRA step. Here the output layer and the loss run together over
row chunks: each chunk's logits live only while its loss and its gradients (for the hidden
states and, when it trains, the output weight) are computed, in the forward pass; the
backward pass only scales the stored gradients. The arithmetic is the plain loss's (fp32
logits from the model-dtype matmul, log-sum-exp, mean over the counted tokens or sum over
``num_items_in_batch``), so the loss matches it to float rounding.

:func:`chunked_lm_head` installs it on a model for one forward call: the output layer's own
``forward`` is swapped (not the module, so the state dict, DDP's hooks and ZeRO-3's
parameter gathering around that module stay as they are) and returns the loss in place of
the logits.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

IGNORE_INDEX = -100
DEFAULT_CHUNK_TOKENS = 1024


def _chunk_rows(vocab: int, target_bytes: int = 256 << 20) -> int:
    """Rows per chunk: about ``target_bytes`` of fp32 logits, at least 64 rows."""
    return max(64, min(DEFAULT_CHUNK_TOKENS * 4, target_bytes // (4 * max(vocab, 1))))


def _function():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """sum over counted rows of CE(hidden @ weight.T (+ bias), label) / divisor, gradients
        computed chunk by chunk in the forward pass."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, labels, divisor, chunk_rows):
            rows = hidden.shape[0]
            needs_hidden = hidden.requires_grad
            needs_weight = weight.requires_grad
            needs_bias = bias is not None and bias.requires_grad
            grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_bias else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, rows, chunk_rows):
                h = hidden[start:start + chunk_rows]
                y = labels[start:start + chunk_rows]
                counted = y != IGNORE_INDEX
                if not bool(counted.any()):
                    continue
                logits = torch.nn.functional.linear(h, weight, bias).float()
                lse = torch.logsumexp(logits, dim=-1)
                target = torch.where(counted, y, 0)
                picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)
                total += ((lse - picked) * counted).sum()
                if needs_hidden or needs_weight or needs_bias:
                    # d(lse - picked)/d logits = softmax - one_hot, for counted rows only
                    grad_logits = torch.softmax(logits, dim=-1)
                    grad_logits[torch.arange(len(y), device=y.device), target] -= 1
                    # scaled here, in fp32, as the plain loss's gradient is before it is cast to
                    # the model's dtype: the backward pass then only multiplies by its grad_output
                    grad_logits *= counted.unsqueeze(1) / divisor
                    del logits
                    if needs_hidden:
                        grad_hidden[start:start + chunk_rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
                    if needs_weight:
                        grad_weight += grad_logits.t() @ h.float()
                    if needs_bias:
                        grad_bias += grad_logits.sum(0)
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.divisor = divisor
            ctx.weight_dtype = weight.dtype
            ctx.bias_dtype = bias.dtype if bias is not None else None
            return total / divisor

        @staticmethod
        def backward(ctx, grad_output):
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            scale = grad_output
            return (None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
                    None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
                    None if grad_bias is None else (grad_bias * scale).to(ctx.bias_dtype),
                    None, None, None)

    return LinearCrossEntropy


_FUNCTION = None


def linear_cross_entropy(hidden, weight, labels, *, bias=None, num_items_in_batch=None, chunk_rows: int | None = None):
    """The causal LM loss of already shifted ``hidden`` (``[..., H]``) against ``labels``
    (``[...]``, IGNORE_INDEX not counted) through the output layer ``weight`` (``[V, H]``):
    mean over counted tokens, or their sum over ``num_items_in_batch`` where given (as
    transformers' loss does for gradient accumulation)."""
    import torch

    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function()
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is not None:
        divisor = num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    else:
        divisor = int((labels != IGNORE_INDEX).sum())
    divisor = float(max(divisor, 1)) if num_items_in_batch is None else float(divisor)
    rows = chunk_rows or _chunk_rows(weight.shape[0])
    return _FUNCTION.apply(hidden, weight, bias, labels, divisor, rows)


def shift_labels(labels):
    """labels[:, 1:] against hidden[:, :-1], as transformers' causal LM loss shifts: the last
    position predicts nothing (IGNORE_INDEX)."""
    import torch

    pad = torch.full_like(labels[..., :1], IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


@contextlib.contextmanager
def chunked_lm_head(model, labels, *, num_items_in_batch=None, chunk_rows: int | None = None):
    """For one ``model(...)`` call without labels: its output layer returns the loss (a 0-d
    tensor, in ``outputs.logits``) instead of the logits. ``labels`` unshifted, as the model's
    own ``labels=`` argument takes them."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError("the model has no output layer with a weight: the chunked loss does not apply")
    shifted = shift_labels(labels)
    own = head.__dict__.get("forward")  # a forward set on the instance (another wrapper), kept

    def forward(self, hidden_states, *args: Any, **kwargs: Any):
        if hidden_states.shape[:-1] != shifted.shape:
            raise ValueError(f"the chunked loss expected hidden states for labels {tuple(shifted.shape)}, got "
                             f"{tuple(hidden_states.shape)} (a model that keeps only some logits?)")
        return linear_cross_entropy(hidden_states, self.weight, shifted, bias=getattr(self, "bias", None),
                                    num_items_in_batch=num_items_in_batch, chunk_rows=chunk_rows)

    head.forward = types.MethodType(forward, head)
    try:
        yield head
    finally:
        if own is None:
            del head.__dict__["forward"]  # the class's forward again
        else:
            head.forward = own


# Decoder families whose forward uses the output layer's result as the logits, unchanged, and
# adds nothing to the loss (no logit soft-capping, no router loss): there, the chunked loss is
# the plain loss.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "granite",
                                    "stablelm", "starcoder2", "cohere", "internlm2", "yi"})


def chunked_loss_applies(model) -> str | None:
    """None when the chunked loss computes this model's loss exactly, else why it does not."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        return f"model type {model_type!r} is not one whose output layer gives the logits unchanged"
    if getattr(config, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight") or type(head).__name__ != "Linear":
        return "its output layer is not a plain linear layer (quantized or adapted?)"
    return None


def chunked_loss_trainer(trainer_cls):
    """``trainer_cls`` whose training loss goes through :func:`chunked_lm_head`; evaluation
    (which may want the logits) and everything else stay the Trainer's."""

    class ChunkedLossTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not model.training or "labels" not in inputs or self.label_smoother is not None \
                    or self.compute_loss_func is not None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            if items is not None:
                inputs["num_items_in_batch"] = items
            with chunked_lm_head(self.accelerator.unwrap_model(model), labels, num_items_in_batch=items):
                outputs = model(**inputs)
            loss = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and items is not None:
                # as Trainer.compute_loss: the divisor counted every process's tokens
                loss = loss * ((self.accelerator.num_processes // self.get_tp_size()) if self.args.n_gpu <= 1
                               else self.args.n_gpu)
            return loss

    ChunkedLossTrainer.__name__ = ChunkedLossTrainer.__qualname__ = f"Chunked{trainer_cls.__name__}"
    return ChunkedLossTrainer


def with_chunked_loss(setting: str, trainer_cls, model):
    """(trainer class, note) for ``--chunked_loss``: auto uses it where it is exact for the
    model (see :func:`chunked_loss_applies`), true insists (a ConfigError naming why it cannot),
    false keeps the Trainer's own loss."""
    from ..errors import ConfigError

    value = str(setting).lower()
    if value in ("false", "off", "no", "0"):
        return trainer_cls, None
    why_not = chunked_loss_applies(model)
    if why_not is None:
        weight = model.get_output_embeddings().weight
        vocab = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 partitions the weight itself
        return (chunked_loss_trainer(trainer_cls),
                f"loss: chunked, {_chunk_rows(vocab)} tokens at a time (no full-vocabulary logits)")
    if value in ("true", "on", "yes", "1"):
        raise ConfigError(f"--chunked_loss true: {why_not}; use --chunked_loss auto or false")
    return trainer_cls, f"loss: the model's own (--chunked_loss auto: {why_not})"
