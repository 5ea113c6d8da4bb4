"""The shared training engine: the loop (trainer), its state, optimizer and schedule, runtime (device,
precision, threads), torchrun processes, evaluation with test-time views, and checkpoints."""
