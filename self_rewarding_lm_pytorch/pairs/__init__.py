"""Preference-pair generation: the one resumable loop (loop.py) and its per-batch pair makers (judged.py: judged
candidates; meta_reward.py: Meta-Rewarding), the typed pair records (records.py), the rules that pick and filter
pairs (selection.py, meta_rules.py), their counts (stats.py)."""
