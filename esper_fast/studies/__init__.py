"""Studies: experiments that settle design questions with numbers (run from the CLI or Python).

* :mod:`esper_fast.studies.advantage_bias` - which value baseline PPO needs (``legacy`` / ``q_op`` /
  ``expected``), measured exactly on :class:`esper_fast.envs.exact_mdp.ExactMDP`.
* :mod:`esper_fast.studies.learning` - PPO learning comparison of the three value modes.
"""
