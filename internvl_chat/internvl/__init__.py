"""InternVL-Med core: InternVL-compatible model, data, training, evaluation and inference."""
