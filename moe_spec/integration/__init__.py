"""Integrations of the budgeting core with serving and modelling libraries."""
