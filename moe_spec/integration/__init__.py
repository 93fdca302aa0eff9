"""Integrations of the budgeted verify pass into other inference stacks."""
