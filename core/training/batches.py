"""The rows, collator and Trainer class the sft objective trains on: padded examples, or
packed rows with ``--sample_packing`` (the data layer packs them; here they meet the model,
whose attention decides the mask, and the Trainer)."""

from __future__ import annotations

from ..data.packing import (loader_fit, example_lengths, mask_style, pack_dataset, packed_trainer_class,
                            rows_per_round)


def training_data(config, train, tokenizer, model, args, trainer_cls):
    """(train dataset, collator, Trainer class, PackingStats or None) for this run's options:
    packed rows with --sample_packing (as many as give every process whole batches); with
    --group_by_length the examples with a length column (so the Trainer's sampler does not
    read every example to measure it)."""
    from ..data.collator import PackingCollator, PaddingCollator
    from .packed_attention import use_packed_attention

    if config.data.sample_packing:
        multiple = rows_per_round(args)
        packed, stats = pack_dataset(train, config.data.model_max_len, config.seed, multiple=multiple)
        warning = loader_fit(stats, args, multiple)
        if warning:
            if args.process_index == 0:
                print(f"[airo] warning: {warning}", flush=True)
        mask = mask_style(getattr(model.config, "_attn_implementation", None))
        if mask == "bool" and use_packed_attention(model, args.device):
            mask = None  # each example is computed on its own: no mask needed
        return (packed, PackingCollator(tokenizer.pad_token_id, mask=mask), packed_trainer_class(trainer_cls),
                stats)
    if str(getattr(args.train_sampling_strategy, "value", args.train_sampling_strategy)) == "group_by_length" \
            and args.length_column_name not in train.column_names:
        train = train.add_column(args.length_column_name, example_lengths(train))
    return train, PaddingCollator(tokenizer.pad_token_id), trainer_cls, None
