"""Who scores answers: the LLM-as-a-judge prompt and its parser, the judges, the meta-judge, self-consistency votes, judge-training data."""
