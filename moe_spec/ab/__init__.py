"""``moe-spec ab``: A/B tests of budgeting policies and the baselines users would pick instead."""
