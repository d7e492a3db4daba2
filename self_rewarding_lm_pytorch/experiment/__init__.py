"""The self-improvement experiment: tasks, arms over the same seeds, measurements and the report, on the public API."""
