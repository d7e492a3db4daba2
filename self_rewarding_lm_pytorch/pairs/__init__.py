"""Preference-pair generation: the one resumable loop, the rules that pick and filter pairs, their counts."""
