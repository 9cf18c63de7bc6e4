"""The web demo (``python -m internvl.serve --model DIR``, Gradio; see ``app``) and the media-viewer registry
(``viewers``) it shares with the HTML evaluation report. Importing this package does not import Gradio."""
