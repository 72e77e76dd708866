"""The floor: a bare Gradio 6 streaming chat over the paced backend, and nothing of hybridchat.

Its ``chat`` event takes the same inputs as the app's (so one driver measures both) and streams
the reply into a ``gr.Chatbot`` token by token through the ``openai`` client: what Gradio itself
costs per streamed turn, which no app built on it can go below.

    python -m bench.bare_gradio --port 7870 --vllm http://127.0.0.1:8100
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import gradio as gr
import openai
import uvicorn
from fastapi import FastAPI

from bench.paced_server import MODEL


def create_app(vllm_url: str, concurrency: int) -> FastAPI:
    client = openai.OpenAI(base_url=f"{vllm_url}/v1", api_key="EMPTY", max_retries=0)

    def chat(message: str, _conversation: Any, _model: str, temperature: float, top_p: float, max_tokens: int,
             _persona: str, _browser: Any, _shown: Any) -> Iterator[tuple[list[dict[str, str]], str]]:
        reply = ""
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": message}], stream=True,
            temperature=temperature, top_p=top_p, max_tokens=int(max_tokens),
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply += chunk.choices[0].delta.content
                yield [{"role": "user", "content": message}, {"role": "assistant", "content": reply}], ""

    with gr.Blocks() as demo:
        chatbot = gr.Chatbot()
        box = gr.Textbox()
        inputs = [box, gr.State(), gr.Textbox(), gr.Number(), gr.Number(), gr.Number(), gr.Textbox(), gr.JSON(),
                  gr.State()]
        box.submit(chat, inputs, [chatbot, box], api_name="chat")
    demo.max_threads = max(40, 2 * concurrency)
    demo.queue(default_concurrency_limit=concurrency)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    mounted: FastAPI = gr.mount_gradio_app(app, demo, path="/")
    return mounted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--vllm", required=True, help="the paced server's URL")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    uvicorn.run(create_app(args.vllm, args.concurrency), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
