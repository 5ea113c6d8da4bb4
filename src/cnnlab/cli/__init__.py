"""The `cnnlab` command: app.py holds the top-level commands (explain, models, export, report, serve) and
the help words, tasks.py each task's train, evaluate and predict."""
