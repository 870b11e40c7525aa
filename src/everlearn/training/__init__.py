"""Training: the step loop, the phase plan, precision, the loss, step checkpoints and the text
stream."""
