"""The page's "Download this chat": the saved chat as a Markdown file (``hybridchat.transcript``),
the same as ``hybridchat sessions export --format md``. ``ChatUI`` takes the handler from
``ExportHandlers``.

Gradio's DownloadButton downloads the file it already holds, so a plain button makes the file and
puts it into a hidden DownloadButton under a new label; the page's script (``SAVE_THE_DOWNLOAD``,
in the page's head: the app's CSP runs no JavaScript sent by events) clicks it when its label
changes. One click for the visitor, and the file is the chat as saved at that moment."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.blocks import Block

from hybridchat import transcript
from hybridchat.chat import ChatService, Conversation
from hybridchat.errors import SessionNotFound, StoreError
from hybridchat.store.base import new_id

Updates = dict[Block, Any]
DOWNLOAD_FILE_ID = "download-file"
SAVE_THE_DOWNLOAD = f"""<script>
new MutationObserver((changes) => {{
  const hidden = document.getElementById("{DOWNLOAD_FILE_ID}");
  if (hidden && changes.some((change) => hidden.contains(change.target))) hidden.click();
}}).observe(document.documentElement, {{subtree: true, childList: true, characterData: true}});
</script>"""


@functools.cache
def _exports() -> Path:
    """Where the files are written: under the temp dir, which Gradio serves files from."""
    return Path(tempfile.mkdtemp(prefix="hybridchat-exports-"))


class ExportHandlers:
    """The download handler; the page's components and helpers are ``ChatUI``'s."""

    service: ChatService
    download_file: gr.DownloadButton
    _owner_of: Callable[..., tuple[str, dict[str, Any]]]

    def download_chat(self, conversation: Conversation | None, browser: dict[str, Any] | None,
                      request: gr.Request) -> Updates:
        """This chat, as saved, into the hidden download button (``None``: nothing to give)."""
        owner, _ = self._owner_of(browser, request)
        if conversation is None or conversation.owner != owner or conversation.session_id is None:
            gr.Info("Nothing to download yet: this chat has no saved reply.")
            return {self.download_file: None}
        try:
            summary = self.service.store.get_session(conversation.session_id)
            text = transcript.markdown(summary, self.service.store.load(conversation.session_id))
        except SessionNotFound:
            gr.Warning("This chat was deleted: there is nothing to download.")
            return {self.download_file: None}
        except StoreError as exc:
            gr.Warning(f"The chat cannot be read for download right now: {exc}")
            return {self.download_file: None}
        folder = _exports() / conversation.session_id  # one file per chat, written anew each time
        folder.mkdir(exist_ok=True)
        path = folder / transcript.file_name(summary)
        path.write_text(text, encoding="utf-8")
        # A new label each time: what tells the page's script to click it (the label is hidden).
        return {self.download_file: gr.DownloadButton(value=str(path), label=f"{path.name} {new_id()}")}
