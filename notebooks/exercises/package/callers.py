"""Your model callers (notebook 04): send what your translators made, return the reply's text.

They run wherever the app runs: in notebook 04, in the app on your laptop, in its pod on GKE.
`hybridchat.endpoints` gives each of them the models the app reaches from there.
"""
import requests

from hybridchat import endpoints


def call_gemma_model(prompt, temperature, top_p, max_tokens):
    """Send a raw Gemma prompt to vLLM's /v1/completions; return only the reply's text."""
    # TODO: your code here (notebook 04 explains it)
    raise NotImplementedError()


def call_gemini_model(contents, temperature, top_p, max_tokens):
    """Send Gemini its contents through google-genai; return the reply's text."""
    # TODO: your code here (notebook 04 explains it)
    raise NotImplementedError()
