"""Running the workshop's notebooks in tests: papermill with the parameters a learner sets, the
outputs as text, a learner's answers written into a workspace copy."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOLUTIONS = sorted(NOTEBOOKS.glob("0*.ipynb"))
CELL_TIMEOUT = 300
FAKE_SECRETS = {
    "HF_TOKEN": "hf_FAKEnotebookTOKEN0123456789",
    "GOOGLE_API_KEY": "AIzaFAKE-notebook-key-0123456789",
    "HYBRIDCHAT_SESSION_SECRET": "notebook-session-secret-FAKE",
    "IAP_CLIENT_SECRET": "GOCSPX-FAKE-notebook-oauth-client-secret",
}



def execute(path: Path, output: Path, **parameters) -> nbformat.NotebookNode:
    papermill.execute_notebook(
        str(path), str(output), parameters=parameters, kernel_name="python3",
        cwd=str(path.parent), execution_timeout=CELL_TIMEOUT, progress_bar=False,
    )
    return nbformat.read(output, as_version=4)


def outputs(notebook: nbformat.NotebookNode) -> str:
    texts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            texts.append(out.get("text", "") or str(data.get("text/markdown") or data.get("text/plain", "")))
    return "\n".join(texts)


def learners_answers(copy: Path) -> None:
    """Write the solutions into a workspace copy's exercise cells, as a learner would."""
    solution, notebook = nbformat.read(NOTEBOOKS / copy.name, as_version=4), nbformat.read(copy, as_version=4)
    for mine, reference in zip(notebook.cells, solution.cells, strict=True):
        if "raise NotImplementedError()" in mine.source:
            mine.source = reference.source
    nbformat.write(notebook, copy)
