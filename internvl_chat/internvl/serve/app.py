"""The Gradio app of the web demo: a viewer for the opened media beside a chat with streamed answers.

Layout: left, the media (upload, or a server path under ``--data-root``), the view rendered by the viewer
registered for its kind (``viewers``: image, and what plugins add: whole-slide images with Deep Zoom tiles and the
tissue grid, volumes with three orthogonal slices and CT windows) and the controls that viewer uses (zoom, click on
the view to centre it, slice position, window preset, overlay); right, the chat about the opened media.

HTTP API (``gradio_client`` or Gradio's REST routes), each also behind the UI:

* ``/open_media(path) -> (view, info, resolved path, ...)``: open a server path (or an uploaded file's path);
  paths outside the data root and the demo's temporary folder are refused (``paths.AllowedPaths``);
* ``/render(path, zoom, cx, cy, slice, window, overlay) -> view``;
* ``/ask(question, history, path) -> history``: streams the answer into the chat history (messages format).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import gradio as gr  # module level: Gradio resolves the gr.SelectData annotation of event handlers here

from internvl.serve.engine import ChatEngine, EngineError
from internvl.serve.paths import AllowedPaths, PathRefused
from internvl.serve.viewers import ViewerError, ViewState, viewer_for_path

MAX_OPEN = 8
VIEW_SIZE = 512


class OpenMedia:
    """Viewer handles by path (an LRU of ``MAX_OPEN``): OpenSlide handles and volumes stay open between renders."""

    def __init__(self):
        self._open: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str):
        with self._lock:
            if path in self._open:
                self._open.move_to_end(path)
                return self._open[path]
            viewer = viewer_for_path(path)
            entry = (viewer, viewer.open(path))
            self._open[path] = entry
            while len(self._open) > MAX_OPEN:
                _, (old_viewer, old_handle) = self._open.popitem(last=False)
                old_viewer.close(old_handle)
            return entry


def _text_of(content) -> str:
    """A chat message's text: Gradio gives a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _messages_to_pairs(history: list) -> list[tuple[str, str]]:
    """Chat messages (role/content dicts) -> [(question, answer)] for ``model.chat``'s history."""
    pairs, question = [], None
    for msg in history or []:
        if msg.get("role") == "user":
            question = _text_of(msg.get("content"))
        elif msg.get("role") == "assistant" and question is not None:
            pairs.append((question, _text_of(msg.get("content"))))
            question = None
    return pairs


def build_app(engine: ChatEngine, allowed: AllowedPaths, title: str = "InternVL-Med demo"):
    media = OpenMedia()

    def _error(exc: Exception):
        return gr.Error(str(exc), print_exception=False)

    def state_of(zoom, cx, cy, slice_pos, window, overlay) -> ViewState:
        return ViewState(zoom=float(zoom or 1), center=(float(cx if cx is not None else 0.5),
                                                         float(cy if cy is not None else 0.5)),
                         slice=float(slice_pos if slice_pos is not None else 0.5), window=window or None,
                         overlay=bool(overlay), size=VIEW_SIZE)

    def open_media(path_text):
        try:
            path = allowed.resolve(path_text)
            viewer, handle = media.get(path)
            window = viewer.default_window(handle)
            image = viewer.render(handle, ViewState(window=window, size=VIEW_SIZE))
        except (PathRefused, ViewerError) as exc:
            raise _error(exc) from None
        c = set(viewer.controls)
        return (image, f"**{viewer.kind}** {os.path.basename(path)}: {viewer.info(handle)}", path, [],
                gr.update(value=1, visible="zoom" in c), 0.5, 0.5,
                gr.update(value=0.5, visible="slice" in c),
                gr.update(choices=list(viewer.window_presets), value=window, visible="window" in c),
                gr.update(value=True, visible="overlay" in c))

    def render(path, zoom, cx, cy, slice_pos, window, overlay):
        if not path:
            return None
        try:
            viewer, handle = media.get(allowed.resolve(path))
            return viewer.render(handle, state_of(zoom, cx, cy, slice_pos, window, overlay))
        except (PathRefused, ViewerError) as exc:
            raise _error(exc) from None

    def recentre(path, zoom, cx, cy, image, evt: gr.SelectData):
        """A click on the view moves the centre there (pan)."""
        if not path or image is None or evt is None or evt.index is None:
            return cx, cy
        width, height = image.size if hasattr(image, "size") else (image.shape[1], image.shape[0])
        zoom = max(1.0, float(zoom or 1))
        x, y = evt.index[0] / width, evt.index[1] / height
        nx = min(1.0, max(0.0, float(cx) + (x - 0.5) / zoom))
        ny = min(1.0, max(0.0, float(cy) + (y - 0.5) / zoom))
        return nx, ny

    def ask(question, history, path):
        history = list(history or [])
        try:
            item = None
            if path:
                resolved = allowed.resolve(path)
                item = (media.get(resolved)[0].kind, resolved)
            pairs = _messages_to_pairs(history)
            history = history + [{"role": "user", "content": question},
                                 {"role": "assistant", "content": ""}]
            for text in engine.stream(question, pairs, item):
                history[-1] = {"role": "assistant", "content": text}
                yield history, ""
        except (PathRefused, ViewerError, EngineError) as exc:
            raise _error(exc) from None

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nModels: " + "; ".join(f"`{m.path}` reads {', '.join(m.kinds)}"
                                                          for m in engine.models))
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="upload an image, slide or volume", type="filepath", elem_id="upload")
                with gr.Row():
                    server_path = gr.Textbox(label="or a path under the data root", elem_id="server-path",
                                             scale=4)
                    open_btn = gr.Button("Open", elem_id="open-btn", scale=1)
                view = gr.Image(label="viewer", type="pil", interactive=False, elem_id="viewer", height=VIEW_SIZE)
                info = gr.Markdown(elem_id="viewer-info")
                zoom = gr.Slider(1, 64, value=1, step=0.5, label="zoom (click the view to centre it)",
                                 elem_id="zoom", visible=False)
                slice_pos = gr.Slider(0, 1, value=0.5, step=0.01, label="slice position", elem_id="slice",
                                      visible=False)
                window = gr.Dropdown(choices=[], label="window", elem_id="window", visible=False)
                overlay = gr.Checkbox(value=True, label="overlay (tissue grid)", elem_id="overlay", visible=False)
                current = gr.Textbox(visible=False, elem_id="current-media")
                cx = gr.Number(value=0.5, visible=False)
                cy = gr.Number(value=0.5, visible=False)
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="chat", elem_id="chat", height=VIEW_SIZE)
                question = gr.Textbox(label="question", elem_id="question", placeholder="Ask about the media")
                ask_btn = gr.Button("Ask", elem_id="ask-btn", variant="primary")

        opened = [view, info, current, chat, zoom, cx, cy, slice_pos, window, overlay]
        open_btn.click(open_media, inputs=server_path, outputs=opened, api_name="open_media")
        server_path.submit(open_media, inputs=server_path, outputs=opened, api_visibility="private")
        upload.upload(open_media, inputs=upload, outputs=opened, api_visibility="private")
        view_inputs = [current, zoom, cx, cy, slice_pos, window, overlay]
        for control in (zoom, slice_pos, window, overlay):
            control.change(render, inputs=view_inputs, outputs=view, api_visibility="private")
        view.select(recentre, inputs=[current, zoom, cx, cy, view], outputs=[cx, cy], api_visibility="private") \
            .then(render, inputs=view_inputs, outputs=view, api_visibility="private")
        render_btn = gr.Button(visible=False)
        render_btn.click(render, inputs=view_inputs, outputs=view, api_name="render")
        ask_btn.click(ask, inputs=[question, chat, current], outputs=[chat, question], api_name="ask")
        question.submit(ask, inputs=[question, chat, current], outputs=[chat, question], api_visibility="private")
    return demo
