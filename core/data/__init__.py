"""The data pipeline: read records, convert, render, tokenize, split."""
