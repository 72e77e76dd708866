"""The exercises and their checkers: generated from the solutions, failing at the checker with the
right hint, and each checker able to fail with a specific one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbclient
import nbformat
import papermill
import pytest
from google.genai import types
from notebook_runs import NOTEBOOKS, execute

from hybridchat.lab import check
from hybridchat.lab.make_exercises import build, strip_solutions


@pytest.mark.parametrize(
    "name, hint",
    [
        ("03_history_translators.ipynb", "`process_message_gemma` (my_app/translators.py, line 10) is not written yet"),
        ("04_model_callers.ipynb", "`call_gemma_model` (my_app/callers.py, line 11) is not written yet"),
    ],
)
@pytest.mark.slow
def test_the_exercises_fail_at_their_checker_with_the_hint(lab_env, tmp_path, name, hint):
    exercise = Path(shutil.copy(NOTEBOOKS / "exercises" / name, tmp_path))  # it writes my_app/ beside it
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(exercise, exercise, MODE="local")
    assert hint in str(failure.value)
    assert "CheckFailed" in failure.value.ename


def test_the_exercises_are_generated_from_the_solutions_and_up_to_date():
    built = build()
    exercises = NOTEBOOKS / "exercises"
    assert set(built) == {exercises / "03_history_translators.ipynb", exercises / "04_model_callers.ipynb",
                          exercises / "08_next_steps.ipynb", exercises / "package" / "translators.py",
                          exercises / "package" / "callers.py", exercises / "infra" / "main.tf"}
    for path, text in built.items():
        assert path.read_text() == text, (
            f"{path.name} is out of date: after changing a solution notebook, run `python -m "
            "hybridchat.lab.make_exercises` (it writes notebooks/exercises/ only; learners' work is in workspace/)"
        )
        stub = "# TODO: Create a GKE Autopilot cluster" if path.suffix == ".tf" else "raise NotImplementedError()"
        assert "### BEGIN SOLUTION" not in text and stub in text


def test_solution_regions_become_stubs_and_bad_markers_are_refused():
    source = "def f():\n    x = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert strip_solutions(source) == (
        "def f():\n    x = 1\n    # TODO: your code here (see the explanation above)\n    raise NotImplementedError()"
    )
    terraform = '# TODO: Create it\n### BEGIN SOLUTION\nresource "a" "b" {\n}\n### END SOLUTION\n\nlocals {}\n'
    assert strip_solutions(terraform, todo=None) == "# TODO: Create it\n\nlocals {}", "left out, its TODO kept"
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("### BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without"):
        strip_solutions("x = 1\n### END SOLUTION")
    with pytest.raises(ValueError, match="inside another"):
        strip_solutions("### BEGIN SOLUTION\n### BEGIN SOLUTION\n")

# --- the checkers can fail, with a specific hint ----------------------------------------------------


def _gemma_with(role_name="model", end="<end_of_turn>\n", final="<start_of_turn>model\n"):
    def render(message, history):
        prompt = ""
        for turn in history:
            role = "user" if turn["role"] == "user" else role_name
            prompt += f"<start_of_turn>{role}\n{turn['content']}{end}"
        return prompt + f"<start_of_turn>user\n{message}{end}" + final
    return render


@pytest.mark.parametrize(
    "translator, hint",
    [
        (_gemma_with(role_name="assistant"), "Gemma calls the assistant's turns `model`"),
        (_gemma_with(final=""), "must end with `<start_of_turn>model\\n`"),
        (_gemma_with(end="\n"), "every turn must end with `<end_of_turn>`"),
        (lambda m, h: ["not a string"], "returned a list, not one string"),
        (lambda m, h: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_the_gemma_checker_names_the_mistake(translator, hint, capsys):
    with pytest.raises(check.CheckFailed, match=re.escape(hint)):
        check.gemma_translator(translator)
    assert capsys.readouterr().out == "", "a failure shows only as the exception's hint"
    check.gemma_translator(_gemma_with())
    assert capsys.readouterr().out.startswith("✅ process_message_gemma")


def test_a_persona_in_a_system_turn_is_told_where_each_model_takes_it():
    """Notebook 08's usual first try: the persona as a turn of its own, in a module with SYSTEM_PROMPT."""
    module = {"types": types, "SYSTEM_PROMPT": "Be brief."}
    exec(  # a learner's module, as the checkers import it
        "def process_message_gemma(message, history):\n"
        "    prompt = f'<start_of_turn>system\\n{SYSTEM_PROMPT}<end_of_turn>\\n'\n"
        "    for turn in [*history, {'role': 'user', 'content': message}]:\n"
        "        role = 'user' if turn['role'] == 'user' else 'model'\n"
        "        prompt += f\"<start_of_turn>{role}\\n{turn['content']}<end_of_turn>\\n\"\n"
        "    return prompt + '<start_of_turn>model\\n'\n"
        "def process_message_gemini(message, history):\n"
        "    return [types.Content(role='system', parts=[types.Part.from_text(text=SYSTEM_PROMPT)])] + [\n"
        "        types.Content(role='user' if t['role'] == 'user' else 'model', parts=[types.Part.from_text(text=t['content'])])\n"
        "        for t in [*history, {'role': 'user', 'content': message}]]\n", module)
    with pytest.raises(check.CheckFailed, match=re.escape("Gemma has no system role: its chat template puts the "
                                                          "persona at the start of the first user turn")):
        check.gemma_translator(module["process_message_gemma"])
    with pytest.raises(check.CheckFailed, match="put SYSTEM_PROMPT at the start of the first user turn's text"):
        check.gemini_translator(module["process_message_gemini"])


@pytest.mark.slow
def test_a_failed_check_shows_its_hint_alone_and_stops_run_all():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from hybridchat.lab import check"),
        nbformat.v4.new_code_cell("def process_message_gemma(message, history):\n    raise NotImplementedError()"),
        nbformat.v4.new_code_cell("check.gemma_translator(process_message_gemma)"),
        nbformat.v4.new_code_cell("print('went on')"),
    ])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        client.execute()
    [error] = notebook.cells[2].outputs
    assert error.output_type == "error" and error.ename == "CheckFailed"
    assert error.traceback == [
        "❌ `process_message_gemma` is not written yet: replace `raise NotImplementedError()` with your code (notebook 03)."
    ], "the hint alone: no traceback, no chained NotImplementedError"
    assert notebook.cells[3].outputs == [], "the notebook stops at the failed check"


def test_the_gemini_checker_names_the_mistake():
    def with_assistant(message, history):
        return [types.Content(role="assistant" if t["role"] == "assistant" else "user", parts=[types.Part.from_text(text=t["content"])]) for t in history] + [
            types.Content(role="user", parts=[types.Part.from_text(text=message)])]

    with pytest.raises(check.CheckFailed, match="role='model', not 'assistant'"):
        check.gemini_translator(with_assistant)
    with pytest.raises(check.CheckFailed, match="expected the roles"):
        check.gemini_translator(lambda m, h: [types.Content(role="user", parts=[types.Part.from_text(text=m)])])


def test_the_caller_checkers_catch_an_echoed_prompt_and_an_empty_reply(capsys):
    with pytest.raises(check.CheckFailed, match="still contains the prompt"):
        check.gemma_caller(lambda prompt, *_: prompt + "Paris")
    with pytest.raises(check.CheckFailed, match="`call_gemini_model` returned an empty reply"):
        check.gemini_caller(lambda *_: "")
    with pytest.raises(check.CheckFailed, match=re.escape("`call_gemma_model` returned the whole JSON answer")):
        check.gemma_caller(lambda *_: {"choices": [{"text": "Paris."}]})
    capsys.readouterr()
    assert check.gemma_caller(lambda *_: "Paris.") is None, "it prints its verdict: no Out[n] repeats the reply"
    assert capsys.readouterr().out.startswith("✅ call_gemma_model answered: 'Paris.'")

