"""Schedules that span devices: the GPipe pipeline and expert dispatch."""
