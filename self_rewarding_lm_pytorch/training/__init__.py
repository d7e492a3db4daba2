"""The training loops (SFT, DPO, SPIN) and what they share: log-probs, the preference loss, the optimiser, early stopping, resumable state."""
