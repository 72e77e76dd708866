"""Your chat app's own code: the history translators (notebook 03) and the model callers (notebook 04).

The notebooks' `%%writefile my_app/...` cells write these modules; the app runs them for every
turn answered on your code's path ("Gemma · your code", "Gemini · your code"):
`hybridchat app --learner-code my_app`, notebook 05, and the image notebook 05 deploys.
"""
