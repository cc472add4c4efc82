"""Meta-RL: task families, rollouts, RL objectives and meta-learners (built on ``ssm``).

Populated by later milestones; importing it already works so the distribution layout is fixed.
"""
