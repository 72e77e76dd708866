"""Your history translators (notebook 03): the conversation, rendered for each model.

The app calls them on every turn answered on your code's path ("Gemma · your code", "Gemini · your
code"), with `message`, the new message, and `history`, the turns before it as Gradio messages:
[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...], oldest first.
"""
from google.genai import types


def process_message_gemma(message, history):
    """One prompt string in Gemma's chat template: the history, then the new message."""
    # TODO: your code here (notebook 03 explains it)
    raise NotImplementedError()


def process_message_gemini(message, history):
    """Gemini's contents: one types.Content per turn, roles "user" and "model"."""
    # TODO: your code here (notebook 03 explains it)
    raise NotImplementedError()
