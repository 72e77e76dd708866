"""hybridchat: one chat app over self-hosted Gemma (vLLM on GKE) and Gemini on Vertex AI."""

__version__ = "0.1.0"
