"""Stage kinds of the orchestrator: their configs, their construction checks and their runners."""
