"""Inference on people's own files: classify and segment photos, explain them. The task object decides
what happens; `handler` is the one place that picks the code of a task's kind."""
