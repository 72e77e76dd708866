"""Helpers the workshop notebooks call, so the notebooks stay prose, parameters and checks.

* ``hybridchat.lab.setup``: which tools and packages are here, and the notebook's settings.
* ``hybridchat.lab.workshop``: the workshop's parameters, saved by notebook 00 and read by every notebook.
* ``hybridchat.lab.shell``: run a command with streamed output and a timeout (secrets masked).
* ``hybridchat.lab.gcp`` and ``hybridchat.lab.terraform``: the exact Google Cloud, kubectl,
  Skaffold and Terraform commands of the workshop, and the waits and port-forward around them.
* ``hybridchat.lab.preflight``: notebook 00's checks of a project before anything is created.
* ``hybridchat.lab.reach``: how a notebook reaches the models, and runs on Gemini alone when Gemma cannot be.
* ``hybridchat.lab.local``: the local stand-in server and the app, started and stopped for a lab.
* ``hybridchat.lab.check``: checker cells for the exercises of 03, 04 and 08 (the learner's package).
* ``hybridchat.lab.check_infra``: checker cells for 01's Terraform exercise, and its "check my progress".
* ``hybridchat.lab.workspace``: the learner's workspace: notebooks, package and Terraform, copied once.
* ``python -m hybridchat.lab.make_exercises``: the exercises (notebooks, package, Terraform), from the solutions.
"""
