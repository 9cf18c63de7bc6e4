"""The web demo's model side: one or more checkpoints, each answering for the media kinds its encoder reads,
with answers streamed token by token (``transformers.TextIteratorStreamer``, generation in a worker thread).

Media and prompts go through the row processor (``internvl.data.processor``, the path training and evaluation use,
``is_train=False``); reader options
(``feature_cache`` for slides, ``--media-option KEY=VALUE``) point every cache into the demo's temporary folder,
so serving writes nothing elsewhere. A question about media no loaded model reads is answered with an error
naming the kinds that are available, never silently without the media.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterator

logger = logging.getLogger(__name__)


class EngineError(ValueError):
    """A request the loaded models cannot answer (media kind not read, unreadable media); message for the user."""


@dataclass
class LoadedModel:
    path: str
    model: object
    tokenizer: object
    processor: object    # internvl.data.processor.RowProcessor
    kinds: tuple[str, ...]


class ChatEngine:
    def __init__(self, model_dirs: list[str], work_dir: str, *, device: str = "auto", media_options: dict | None = None,
                 max_new_tokens: int = 128):
        from internvl.data.processor import RowProcessor
        from internvl.evaluation.runner import load_model

        self.max_new_tokens = max_new_tokens
        self.models: list[LoadedModel] = []
        options = {"feature_cache": os.path.join(work_dir, "wsi_features"), **(media_options or {})}
        for path in model_dirs:
            model, tokenizer = load_model(path, device=device)
            kinds = tuple(model.config.tower_kinds())
            self.models.append(LoadedModel(path, model, tokenizer, RowProcessor(model.config, tokenizer,
                                                                                options=options), kinds))
            logger.info("loaded %s (reads %s)", path, ", ".join(kinds))
        self._lock = threading.Lock()

    def kinds(self) -> list[str]:
        return sorted({k for m in self.models for k in m.kinds})

    def model_for(self, kind: str | None) -> LoadedModel:
        from internvl.media import MEDIA_READERS

        if kind is None:
            return self.models[0]
        for m in self.models:
            if kind in m.kinds or MEDIA_READERS.resolve(kind) in m.kinds:
                return m
        raise EngineError(f"no loaded model reads {kind!r} media (loaded models read: {', '.join(self.kinds())}); "
                          f"start the demo with a --model whose encoder reads {kind!r}")

    def stream(self, question: str, history: list[tuple[str, str]], media: tuple[str, str] | None = None,
               max_new_tokens: int | None = None, temperature: float = 0.0) -> Iterator[str]:
        """Yield the growing answer text. ``media`` is (kind, path) for this turn; ``history`` earlier (q, a)."""
        import torch
        from transformers import TextIteratorStreamer

        from internvl.errors import InputError
        from internvl.evaluation.runner import generation_config, media_inputs

        if not (question or "").strip():
            raise EngineError("empty question")
        entry = self.model_for(media[0] if media else None)
        turns = [t for q, a in history for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        row = {**({media[0]: [media[1]]} if media else {}),
               "conversations": turns + [{"from": "human", "value": question}]}
        try:
            inputs = entry.processor.prompt_inputs(row, "<web demo>")
        except (InputError, ValueError) as exc:
            raise EngineError(str(exc)) from exc
        gen = generation_config(max_new_tokens or self.max_new_tokens, temperature)
        streamer = TextIteratorStreamer(entry.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        gen["streamer"] = streamer
        dtype = next(entry.model.parameters()).dtype
        pixels = media_inputs(inputs.items, inputs.item_kinds, entry.model.device, dtype)
        errors: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode():
                    entry.model.generate_text(entry.tokenizer, [inputs.input_ids], gen, pixel_values=pixels,
                                              item_kinds=inputs.item_kinds or None)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()

        with self._lock:  # one generation at a time: the models are shared
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                yield text
            worker.join()
        if errors:
            raise errors[0]
        if not text:
            yield ""
