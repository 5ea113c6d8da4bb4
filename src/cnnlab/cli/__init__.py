"""The `cnnlab` command: app.py holds the top-level commands, tasks.py each task's train, evaluate,
predict and explain."""
