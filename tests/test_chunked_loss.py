"""The chunked loss (output layer and cross-entropy over row chunks, no full-vocabulary
logits) is the plain causal LM loss: the same value and the same gradients, inside a real
Trainer with gradient accumulation, for frozen and trained output layers."""

from __future__ import annotations

import pytest
import torch

from airo.core.training.chunked_loss import (
    IGNORE_INDEX,
    chunked_lm_head,
    chunked_loss_applies,
    chunked_loss_trainer,
    linear_cross_entropy,
)


def _model(vocab=300, seed=0, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype)


def _batch(vocab=300, rows=3, length=25, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=generator)
    labels = ids.clone()
    labels[:, :7] = IGNORE_INDEX
    labels[1, 18:] = IGNORE_INDEX
    return ids, labels


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
@pytest.mark.parametrize("items", [None, 40])
def test_loss_and_gradients_equal_the_plain_loss(chunk_rows, items):
    model = _model()
    ids, labels = _batch()
    kwargs = {} if items is None else {"num_items_in_batch": torch.tensor(items)}
    plain = model(input_ids=ids, labels=labels, **kwargs).loss
    plain.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with chunked_lm_head(model, labels, chunk_rows=chunk_rows, **kwargs):
        chunked = model(input_ids=ids).logits
    chunked.backward()
    assert chunked.shape == () and abs(chunked.item() - plain.item()) < 1e-5
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert "forward" not in model.lm_head.__dict__  # the output layer is itself again
    assert model(input_ids=ids).logits.shape == (3, 25, 300)


def test_a_frozen_output_layer_gets_no_gradient_and_a_bias_is_used():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    bias = torch.randn(50, requires_grad=True)
    labels = torch.tensor([3, -100, 7, 49, 0, 1, -100, 2, 2, 5])
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_rows=3)
    loss.backward()
    reference_hidden = hidden.detach().clone().requires_grad_()
    reference_bias = bias.detach().clone().requires_grad_()
    reference = torch.nn.functional.cross_entropy(reference_hidden @ weight.t() + reference_bias, labels)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-6
    torch.testing.assert_close(hidden.grad, reference_hidden.grad)
    torch.testing.assert_close(bias.grad, reference_bias.grad)


def test_no_counted_token_is_a_zero_loss():
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(20, 8), torch.full((4,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().sum() == 0


def test_a_trainer_with_accumulation_trains_the_same_weights(tmp_path):
    """SGD, so the weights compare the gradients themselves (Adam's normalisation would blow a
    rounding-level difference in a near-zero gradient up to a full step)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids, labels = _batch(rows=8)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "labels")}

    def train(trainer_cls):
        model = _model(seed=3)
        args = TrainingArguments(output_dir=str(tmp_path / trainer_cls.__name__), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, max_steps=2, learning_rate=0.5, logging_steps=1, optim="sgd",
                                 save_strategy="no", report_to="none", use_cpu=True, seed=0, data_seed=0)
        trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=collate)
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        return losses, {n: p.detach().clone() for n, p in model.named_parameters()}

    plain_losses, plain_weights = train(Trainer)
    chunked_losses, chunked_weights = train(chunked_loss_trainer(Trainer))
    assert len(plain_losses) == 2
    assert chunked_losses == pytest.approx(plain_losses, abs=1e-5)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(chunked_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_models_it_does_not_compute_exactly_are_named():
    assert chunked_loss_applies(_model()) is None

    class Config:
        model_type = "gemma2"
        final_logit_softcapping = 30.0

    class Softcapped(torch.nn.Module):
        config = Config()

        def get_output_embeddings(self):
            return torch.nn.Linear(2, 2)

    assert "not one whose output layer" in chunked_loss_applies(Softcapped())


def test_true_where_it_is_not_exact_is_a_config_error_and_false_keeps_the_trainer():
    from transformers import Trainer

    from airo.core.errors import ConfigError
    from airo.core.training.chunked_loss import with_chunked_loss

    model = _model()
    model.config.model_type = "gemma2"
    with pytest.raises(ConfigError, match="--chunked_loss true: model type 'gemma2'"):
        with_chunked_loss("true", Trainer, model)
    assert with_chunked_loss("auto", Trainer, model)[0] is Trainer
    assert with_chunked_loss("false", Trainer, _model()) == (Trainer, None)
    chunked, note = with_chunked_loss("auto", Trainer, _model())
    assert chunked is not Trainer and issubclass(chunked, Trainer) and note.startswith("loss: chunked")


@pytest.mark.slow
@pytest.mark.parametrize("packing, bits", [(False, 32), (True, 32), (False, 16)])
def test_a_run_trains_the_same_with_and_without_it(tiny_model_dir, tmp_path, airo_env, packing, bits):
    """airo train with the chunked loss (auto, on for llama) and with --chunked_loss false: the
    same logged losses and gradient norms, padded and packed; in fp32 to float rounding, in
    bf16 to bf16's (the matmuls' accumulation order differs, and three steps compound it)."""
    import json

    from airo.core.config import build_config
    from airo.core.training import run_training
    from conftest import EXAMPLES

    def losses(name, *extra):
        root = tmp_path / name
        run_training(build_config(None, [
            "--model_name_or_path", tiny_model_dir, "--output_dir", str(root / "out"),
            "--dataset", str(EXAMPLES / "data" / "conversations.json"), "--dataset_format", "airoboros_chat",
            "--model_max_len", "256", "--max_steps", "3", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "2", "--bits", str(bits), "--lora_r", "4", "--eval_dataset_size", "0",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "3",
            "--sample_packing", str(packing).lower(), *extra]))
        rows = [json.loads(x) for x in (root / "out-checkpoints" / "metrics.jsonl").read_text().splitlines()]
        return [(r["loss"], r["grad_norm"]) for r in rows if "loss" in r]

    chunked = losses("chunked")
    plain = losses("plain", "--chunked_loss", "false")
    assert len(plain) == 3
    loss_tolerance, norm_tolerance = (dict(abs=1e-5), dict(rel=1e-4)) if bits == 32 else (dict(rel=1e-4), dict(rel=2e-2))
    for (loss, norm), (plain_loss, plain_norm) in zip(chunked, plain, strict=True):
        assert loss == pytest.approx(plain_loss, **loss_tolerance)
        assert norm == pytest.approx(plain_norm, **norm_tolerance)
